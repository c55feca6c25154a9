"""Live statistics across seeds: an aggregate TensorBoard run per hyperparameter setting of a population.

For every setting (the members that differ only in their seed) the population writes, against env steps, the
IQM and a 95% bootstrap CI across its seeds of the recent training return (each member's mean over its last
episodes, as its own progress line shows it) and of the eval return, into
``<sweep dir>/aggregate/tb/<setting>/``. TensorBoard draws each triple as one band (a custom-scalars margin
chart): no tool shows the spread across seeds while they train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dqnrun.loggers import TensorBoardLogger
from dqnrun.population.stats import bootstrap_ci, iqm

AGGREGATE_DIR = "aggregate"
RETURN, EVAL = "aggregate/episodic_return", "aggregate/eval_return"
MEMBERS = "aggregate/members"


def tags(name: str) -> tuple[str, str, str]:
    """The IQM and CI bound tags of a statistic."""
    return f"{name}_iqm", f"{name}_ci_low", f"{name}_ci_high"


def summary(values: list[float]) -> tuple[float, float, float]:
    """(IQM, CI low, CI high) of ``values``."""
    low, high = bootstrap_ci(values)
    return iqm(values), low, high


class AggregateBoard:
    """One TensorBoard run per setting under ``root/aggregate/tb/<setting label>``, opened on first use.

    ``purge_step`` (a resumed population) drops the events an interrupted run wrote after its checkpoint, as each
    member's own logger does.
    """

    def __init__(self, root: Path, purge_step: int | None = None) -> None:
        self.root = Path(root) / AGGREGATE_DIR
        self.purge_step = purge_step
        self._writers: dict[str, TensorBoardLogger] = {}

    def _writer(self, setting: str) -> TensorBoardLogger:
        writer = self._writers.get(setting)
        if writer is None:
            writer = self._writers[setting] = TensorBoardLogger(self.root, label=setting, purge_step=self.purge_step)
            writer._add(_layout(), 0)
        return writer

    def log(self, setting: str, name: str, values: list[float], step: int, members: int | None = None) -> None:
        """IQM and CI of ``values`` (one per seed) for statistic ``name`` at env step ``step``."""
        if not values:
            return
        scalars: dict[str, float] = dict(zip(tags(name), summary(values), strict=True))
        if members is not None:
            scalars[MEMBERS] = float(members)
        self._writer(setting).log(scalars, step)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _layout() -> Any:
    """TensorBoard's custom-scalars layout: each statistic's IQM drawn between its CI bounds (a margin chart)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    charts = []
    for name, title in ((RETURN, "episodic return: IQM and 95% CI across seeds"),
                        (EVAL, "eval return: IQM and 95% CI across seeds")):
        mid, low, high = tags(name)
        series = layout_pb2.MarginChartContent.Series(value=mid, lower=low, upper=high)
        charts.append(layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[series])))
    layout = layout_pb2.Layout(category=[layout_pb2.Category(title="population", chart=charts)])
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME))
    return Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, metadata=meta,
                                        tensor=_string_tensor(layout.SerializeToString()))])


def _string_tensor(data: bytes) -> Any:
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING

    return TensorProto(dtype=DT_STRING, string_val=[data], tensor_shape=TensorShapeProto())
