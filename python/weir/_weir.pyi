"""Type stubs of weir's native module (crates/weir-python)."""

from typing import Any, Dict, Optional

import pyarrow as pa

class PlanError(Exception):
    """The pipeline is invalid: the same message and key path as `weir validate` / `weir run`."""

class JobError(Exception):
    """The job failed while running; the message carries the cause chain."""

class Job:
    """A running job."""

    def next_batch(self) -> Optional[pa.RecordBatch]:
        """The next batch of the collect sink, or None once the job ended."""
    def wait(self) -> str:
        """Waits for the end; the per-step counters as JSON."""
    def stop(self) -> None:
        """Asks the sources to stop."""
    def finished(self) -> bool:
        """Whether the job has ended."""
    def progress(self) -> str:
        """Live per-step counters as JSON."""
    def steps(self) -> list[str]:
        """The step names in plan order."""

def logical_graph(spec_json: str, origin: str = ..., parallelism: Optional[int] = ...) -> str:
    """The logical graph of a spec as JSON."""
def explain(spec_json: str, origin: str = ..., json: bool = ..., parallelism: Optional[int] = ...) -> str:
    """The plan as `weir explain` prints it."""
def node_schema(spec_json: str, node: str, origin: str = ...) -> pa.Schema:
    """The planned output schema of one node."""
def yaml_to_json(text: str, origin: str, vars: Optional[Dict[str, str]] = ...) -> str:
    """A YAML spec with variables resolved, as JSON."""
def json_to_yaml(spec_json: str) -> str:
    """A spec's JSON as YAML."""
def schema_json(schema: pa.Schema) -> str:
    """A pyarrow schema in arrow-schema's serde form."""
def start(
    spec_json: str,
    origin: str = ...,
    parallelism: Optional[int] = ...,
    udfs: Optional[Dict[str, Any]] = ...,
    collect: bool = ...,
    resume: bool = ...,
    overwrite: bool = ...,
    threads: Optional[int] = ...,
) -> Job:
    """Starts a pipeline."""
