"""Where each scalar sits in TensorBoard: its group, the part of its tag before the first `/`.

TensorBoard's TIME SERIES and SCALARS tabs sort the groups by name and expand the first two.
A run's metrics keep their own names everywhere (metrics.json, monitors, CSV); in TensorBoard the
curves a run exists for are filed under groups whose names sort first, so that they are what
opens expanded: `descent/` (the loss and gradient norm, `train/*`) and `distance/` (to the
closed-form optimum: `ref/*`, theory's predicted excess loss, eigen's power-method baseline), or
for a task without an optimum (mlp) `evaluation/` (`val/*`). Everything else sorts after them:
`final/*`, `images/*`, `lr-*`, `stability/` (`curvature/*`, callbacks.sharpness), `test/*`,
`theory/*` (the constants). A card shows its tag without
the group, so it reads as the metric's own name: `train/loss` under `descent`.
"""

from __future__ import annotations

# metric name prefix -> its TensorBoard group; the first match wins, the rest keep their name
GROUPS = (
    ("train/", "descent"),
    ("ref/", "distance"),
    ("baseline/", "distance"),
    ("theory/excess_loss", "distance"),
    ("theory/log10_excess_loss", "distance"),
    ("reconstruction_rel_error", "distance"),
    ("val/", "evaluation"),
    ("curvature/", "stability"),  # callbacks.sharpness: after descent/ and distance/ (or evaluation/)
)

_TAGS: dict[str, str] = {}  # a row's names recur at every logged step: each is looked up once


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of a metric: `train/loss` -> `descent/train/loss`, `final/loss` as it is."""
    tag = _TAGS.get(name)
    if tag is None:
        group = next((group for prefix, group in GROUPS if name.startswith(prefix)), None)
        tag = _TAGS[name] = f"{group}/{name}" if group else name
    return tag


def metric_name(tag: str) -> str:
    """The metric a TensorBoard tag holds, the inverse of tensorboard_tag: `descent/train/loss`
    -> `train/loss`; a tag descend does not file under a group is its metric's name."""
    _, _, name = tag.partition("/")
    return name if name and tensorboard_tag(name) == tag else tag
