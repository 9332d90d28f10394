//! The [`Backend`] contract (a loaded model that runs batches of tensors) and [`OrtBackend`], its
//! ONNX Runtime implementation.
//!
//! Tensors cross the contract as [`HostTensor`]s: a shape and a flat Arrow primitive array, so an
//! input built from a `FixedSizeList` column's child values goes to the model without a copy.

use crate::model::{ModelInfo, model_name, ort_environment};
use arrow::array::{Array, ArrayRef, PrimitiveArray};
use arrow::datatypes::{ArrowPrimitiveType, DataType};
use std::path::Path;
use std::sync::Arc;
use weir_types::{Error, Result};

/// Runs `$body` with `$T` bound to the Arrow primitive type of `$dt`, or evaluates `$other`.
macro_rules! with_primitive {
    ($dt:expr, $T:ident => $body:expr, else $other:expr) => {
        match $dt {
            DataType::Float32 => {
                type $T = arrow::datatypes::Float32Type;
                $body
            }
            DataType::Float64 => {
                type $T = arrow::datatypes::Float64Type;
                $body
            }
            DataType::Int8 => {
                type $T = arrow::datatypes::Int8Type;
                $body
            }
            DataType::Int16 => {
                type $T = arrow::datatypes::Int16Type;
                $body
            }
            DataType::Int32 => {
                type $T = arrow::datatypes::Int32Type;
                $body
            }
            DataType::Int64 => {
                type $T = arrow::datatypes::Int64Type;
                $body
            }
            DataType::UInt8 => {
                type $T = arrow::datatypes::UInt8Type;
                $body
            }
            DataType::UInt16 => {
                type $T = arrow::datatypes::UInt16Type;
                $body
            }
            DataType::UInt32 => {
                type $T = arrow::datatypes::UInt32Type;
                $body
            }
            DataType::UInt64 => {
                type $T = arrow::datatypes::UInt64Type;
                $body
            }
            _ => $other,
        }
    };
}
pub(crate) use with_primitive;

/// A dense tensor on the host: `shape` (batch dimension first) and its elements in row-major order
/// as a flat Arrow primitive array without nulls (`data.len()` is the product of `shape`).
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Dimensions, batch first.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: ArrayRef,
}

impl HostTensor {
    /// A tensor, checking that `data` has as many elements as `shape` says.
    pub fn try_new(shape: Vec<usize>, data: ArrayRef) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::internal(format!(
                "tensor of shape {shape:?} needs {n} elements but has {}",
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }
}

/// Options a backend is loaded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// Intra-op threads of the instance.
    pub cpus: usize,
    /// GPUs to use (0: CPU only).
    pub gpus: usize,
    /// Whether the intra-op threads spin while waiting for work (ONNX Runtime's default); off,
    /// they sleep and leave the cores to the other steps.
    pub spin: bool,
}

/// A model loaded for one inference instance.
///
/// Contract: a backend is created (its model loaded) **once per instance**, on the instance's own
/// OS thread, by a [`BackendFactory`]; [`run`](Backend::run) is then called on that same thread
/// only, one batch at a time. `run` **blocks** for the duration of the inference and must never be
/// called on an async executor thread. An error from `run` concerns that batch only (the caller
/// may retry its rows one by one); the backend must stay usable after returning one.
pub trait Backend: Send {
    /// The model's inputs, outputs and metadata.
    fn info(&self) -> &ModelInfo;

    /// Runs one batch: `inputs` are (model input name, tensor with the batch dimension first);
    /// returns (model output name, tensor) for every model output. Blocks.
    fn run(&mut self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>>;

    /// Whether the backend can still run batches. A backend that talks to a model elsewhere (a
    /// process, a server) answers `false` once that is gone; an inference service then treats
    /// the error [`run`](Backend::run) returned as the death of the instance (its requests go to
    /// other instances) rather than as a failure of the batch. Default: always `true`.
    fn healthy(&self) -> bool {
        true
    }
}

/// Creates the backend of instance `index` (called on that instance's thread).
pub type BackendFactory = Arc<dyn Fn(usize) -> Result<Box<dyn Backend>> + Send + Sync>;

/// ONNX Runtime backend: one `ort` session per instance.
pub struct OrtBackend {
    session: ort::session::Session,
    info: ModelInfo,
    name: String,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend")
            .field("model", &self.name)
            .finish()
    }
}

/// What a session is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionUse {
    /// Running the model: ONNX Runtime's full graph optimisation.
    Run,
    /// Reading inputs, outputs and metadata only (planning): no graph optimisation, which makes
    /// opening several times faster and does not change what the model declares.
    Metadata,
}

/// Opens a session on `path` with `cpus` intra-op threads, on `gpus` CUDA devices when > 0.
pub(crate) fn open_session(
    path: &Path,
    cpus: usize,
    gpus: usize,
    spin: bool,
    usage: SessionUse,
) -> Result<ort::session::Session> {
    let name = model_name(path);
    if !path.is_file() {
        return Err(Error::config(format!(
            "model file {} does not exist (models are installed by scripts/setup-models.sh)",
            path.display()
        )));
    }
    let env = ort_environment()?;
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::external(format!("cannot {what} for model {name}: {e}"))
    };
    let mut builder =
        ort::session::Session::builder(&env).map_err(|e| fail("create a session builder", &e))?;
    builder = builder
        .with_intra_threads(cpus.max(1))
        .map_err(|e| fail("set intra-op threads", &e))?;
    builder = builder
        .with_intra_op_spinning(spin)
        .map_err(|e| fail("set intra-op spinning", &e))?;
    if usage == SessionUse::Metadata {
        builder = builder
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Disable)
            .map_err(|e| fail("turn graph optimisation off", &e))?;
    }
    if gpus > 0 {
        let devices: Vec<_> = env
            .devices()
            .filter(|d| d.ep().is_ok_and(|ep| ep == "CUDAExecutionProvider"))
            .take(gpus)
            .collect();
        if devices.len() < gpus {
            let eps: Vec<String> = env
                .devices()
                .filter_map(|d| d.ep().ok().map(str::to_string))
                .collect();
            return Err(Error::config(format!(
                "gpus: {gpus} requested but the onnx runtime loaded from ORT_DYLIB_PATH offers {} cuda device(s) (execution providers found: {}); use gpus: 0 or install a CUDA build of onnx runtime on a machine with a GPU",
                devices.len(),
                if eps.is_empty() {
                    "none".to_string()
                } else {
                    eps.join(", ")
                }
            )));
        }
        builder = builder
            .with_devices(devices, None)
            .map_err(|e| fail("register the cuda execution provider", &e))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| fail("load the model", &e))
}

impl OrtBackend {
    /// Loads the model at `path` (one session). Blocks for the duration of the load.
    pub fn load(path: &Path, options: &BackendOptions) -> Result<Self> {
        let session = open_session(
            path,
            options.cpus,
            options.gpus,
            options.spin,
            SessionUse::Run,
        )?;
        let info = ModelInfo::from_session(path, &session)?;
        Ok(OrtBackend {
            session,
            info,
            name: model_name(path),
        })
    }

    /// A factory loading `path` with `options` for every instance.
    pub fn factory(path: &Path, options: BackendOptions) -> BackendFactory {
        let path = path.to_path_buf();
        Arc::new(move |_| Ok(Box::new(OrtBackend::load(&path, &options)?) as Box<dyn Backend>))
    }
}

fn to_ort_input<'a>(
    model: &str,
    name: &str,
    t: &'a HostTensor,
) -> Result<ort::session::SessionInputValue<'a>> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    let err = |e: &dyn std::fmt::Display| {
        Error::external(format!("cannot pass input '{name}' to model {model}: {e}"))
    };
    with_primitive!(t.data.data_type(), T => {
        let arr = t.data.as_any().downcast_ref::<PrimitiveArray<T>>().ok_or_else(|| {
            Error::internal(format!("input '{name}' of model {model} is not a primitive array"))
        })?;
        let values: &[<T as ArrowPrimitiveType>::Native] = arr.values();
        let v = ort::value::TensorRef::from_array_view((shape, values)).map_err(|e| err(&e))?;
        Ok(v.into())
    }, else Err(Error::input(format!(
        "input '{name}' of model {model}: element type {} is not supported",
        t.data.data_type()
    ))))
}

fn from_ort_output(model: &str, name: &str, v: &ort::value::DynValue) -> Result<HostTensor> {
    use crate::model::ElementType;
    let err = |e: &dyn std::fmt::Display| {
        Error::external(format!("cannot read output '{name}' of model {model}: {e}"))
    };
    let element = v
        .dtype()
        .tensor_type()
        .map(ElementType::from_ort)
        .ok_or_else(|| Error::input(format!("output '{name}' of model {model} is not a tensor")))?;
    let dt = element.to_arrow().ok_or_else(|| {
        Error::input(format!(
            "output '{name}' of model {model} has element type {element}, which weir does not support"
        ))
    })?;
    with_primitive!(&dt, T => {
        let (shape, data) = v
            .try_extract_tensor::<<T as ArrowPrimitiveType>::Native>()
            .map_err(|e| err(&e))?;
        let shape: Vec<usize> = shape.iter().map(|d| (*d).max(0) as usize).collect();
        let arr: ArrayRef = Arc::new(PrimitiveArray::<T>::from_iter_values(data.iter().copied()));
        HostTensor::try_new(shape, arr)
    }, else Err(Error::internal(format!("output '{name}' of model {model}: unexpected type {dt}"))))
}

impl Backend for OrtBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&mut self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>> {
        let mut values = Vec::with_capacity(inputs.len());
        for (name, t) in &inputs {
            values.push((name.as_str(), to_ort_input(&self.name, name, t)?));
        }
        let model = self.name.clone();
        let outputs = self
            .session
            .run(values)
            .map_err(|e| Error::external(format!("model {model} failed on a batch: {e}")))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, v) in outputs.iter() {
            result.push((name.to_string(), from_ort_output(&model, name, &v)?));
        }
        Ok(result)
    }
}
