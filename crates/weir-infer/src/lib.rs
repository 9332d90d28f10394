//! weir's inference: the `infer` operator running ONNX models on Arrow tensor columns, with
//! engine-side batching (size/time triggers, an adaptive batch size under a latency budget,
//! length bucketing for ragged text inputs), the one instance pool every call goes to
//! ([`pool`]: the step's own instances, or a declared service's), and post-processing ops
//! (`top_k`, `l2_normalize`, `mean_pool`), and `vad` (Silero voice-activity detection: audio rows to
//! speech segments).

#![warn(missing_docs)]

pub mod backend;
pub mod batching;
pub mod model;
pub mod tensor;

pub use backend::{Backend, BackendFactory, BackendOptions, HostTensor, OrtBackend};
pub use model::{ElementType, ModelInfo, TensorInfo, init_ort_from, ort_environment};
pub mod operator;
pub mod pool;
mod results_log;
pub mod service;
pub mod spec;

pub use service::{
    CallOptions, DeclaredService, InstanceStatus, ModelService, ServiceStatus, Tensors,
};

pub use operator::{InFlight, InferCounters, InferOperator, RowRef};
pub use spec::{BatchSpec, InferPlan, InferSpec};
pub mod postprocess;

pub use postprocess::{L2NormalizeSpec, MeanPoolSpec, TopKSpec};
pub mod vad;

pub use vad::VadSpec;
