//! Out-of-process instances over Arrow Flight (loopback only): the server that `weir serve-model`
//! runs ([`serve_model`]), the client backend an instance thread uses to reach it
//! ([`FlightBackend`]), and the factory that starts one server process per instance
//! ([`process_factory`]).
//!
//! Wire format ("weir tensors v1"), the same both ways, sent with `DoExchange`: one Arrow schema
//! `{name: utf8, dtype: utf8, shape: utf8, data: binary}`, one row per chunk of a tensor's
//! elements (little-endian, at most [`CHUNK`] bytes per row, a tensor's chunks in order).
//! `dtype` is weir's element name (`f32`, `i64`, ...), `shape` the dimensions joined by commas.
//! A request's first message carries a descriptor with the command [`DESCRIPTOR`].
//! Chunking keeps every Flight message under the transport's limit however large the tensors;
//! any Arrow Flight implementation (pyarrow.flight, for one) can speak it. Errors come back as
//! gRPC statuses: `INVALID_ARGUMENT` for errors of the batch (not retried), `INTERNAL` for
//! model failures (retried), `UNAVAILABLE` while the server shuts down (the caller treats the
//! instance as gone and sends the request elsewhere).

use arrow::array::{Array, ArrayRef, BinaryArray, StringArray};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};
use weir_infer::{
    Backend, BackendFactory, BackendOptions, ElementType, HostTensor, ModelInfo, OrtBackend,
    Tensors,
};
use weir_types::{Error, ErrorKind, Result};

/// The command of the descriptor on a request's first message.
pub const DESCRIPTOR: &str = "weir-tensors-v1";

/// Largest chunk of tensor bytes in one row (and so, roughly, in one Flight message).
pub const CHUNK: usize = 1 << 20;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new("shape", DataType::Utf8, false),
        Field::new("data", DataType::Binary, false),
    ]))
}

fn element(name: &str) -> Option<ElementType> {
    Some(match name {
        "f32" => ElementType::F32,
        "f64" => ElementType::F64,
        "i8" => ElementType::I8,
        "i16" => ElementType::I16,
        "i32" => ElementType::I32,
        "i64" => ElementType::I64,
        "u8" => ElementType::U8,
        "u16" => ElementType::U16,
        "u32" => ElementType::U32,
        "u64" => ElementType::U64,
        _ => return None,
    })
}

/// Tensors → one batch of chunk rows.
pub fn encode(tensors: &Tensors) -> Result<RecordBatch> {
    let (mut names, mut dtypes, mut shapes) = (vec![], vec![], vec![]);
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for (name, t) in tensors {
        let dt = t.data.data_type();
        let el = ElementType::from_arrow(dt)
            .ok_or_else(|| Error::input(format!("tensor '{name}': unsupported type {dt}")))?;
        let width = dt.primitive_width().unwrap_or(1);
        let data = t.data.to_data();
        let buf = data
            .buffers()
            .first()
            .ok_or_else(|| Error::internal(format!("tensor '{name}' has no data buffer")))?;
        let start = data.offset() * width;
        let bytes = buf
            .as_slice()
            .get(start..start + data.len() * width)
            .ok_or_else(|| {
                Error::internal(format!("tensor '{name}' is shorter than its length"))
            })?;
        let shape = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut pieces: Vec<Vec<u8>> = bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        if pieces.is_empty() {
            pieces.push(Vec::new());
        }
        for p in pieces {
            names.push(name.clone());
            dtypes.push(el.to_string());
            shapes.push(shape.clone());
            chunks.push(p);
        }
    }
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(dtypes)),
            Arc::new(StringArray::from(shapes)),
            Arc::new(BinaryArray::from_iter_values(chunks)),
        ],
    )?)
}

/// Batches of chunk rows → tensors, in order of first appearance.
pub fn decode(batches: &[RecordBatch]) -> Result<Tensors> {
    let mut order: Vec<(String, String, String, Vec<u8>)> = Vec::new();
    for b in batches {
        let col = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>();
        let (Some(names), Some(dtypes), Some(shapes), Some(data)) = (
            col(0),
            col(1),
            col(2),
            b.column(3).as_any().downcast_ref::<BinaryArray>(),
        ) else {
            return Err(Error::input(
                "not a weir tensors batch: expected columns name, dtype, shape (utf8) and data (binary)",
            ));
        };
        for r in 0..b.num_rows() {
            let name = names.value(r);
            match order.iter_mut().find(|(n, ..)| n == name) {
                Some((_, _, _, bytes)) => bytes.extend_from_slice(data.value(r)),
                None => order.push((
                    name.to_string(),
                    dtypes.value(r).to_string(),
                    shapes.value(r).to_string(),
                    data.value(r).to_vec(),
                )),
            }
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for (name, dtype, shape, bytes) in order {
        let dt = element(&dtype)
            .and_then(|e| e.to_arrow())
            .ok_or_else(|| Error::input(format!("tensor '{name}': unknown dtype '{dtype}'")))?;
        let shape: Vec<usize> = if shape.is_empty() {
            Vec::new()
        } else {
            shape
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::input(format!("tensor '{name}': bad shape '{shape}': {e}")))?
        };
        let width = dt.primitive_width().unwrap_or(1);
        let n: usize = shape.iter().product();
        if n * width != bytes.len() {
            return Err(Error::input(format!(
                "tensor '{name}': shape {shape:?} of {dtype} needs {} bytes but {} came",
                n * width,
                bytes.len()
            )));
        }
        let data = arrow::array::ArrayData::builder(dt)
            .len(n)
            .add_buffer(Buffer::from_vec(bytes))
            .align_buffers(true)
            .build()?;
        let arr: ArrayRef = arrow::array::make_array(data);
        out.push((name, HostTensor::try_new(shape, arr)?));
    }
    Ok(out)
}

/// The gRPC status of an error: `INVALID_ARGUMENT` for errors of the batch (not retried),
/// `INTERNAL` for the rest (retried).
pub(crate) fn status_of(e: &Error) -> Status {
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Schema | ErrorKind::Config => {
            Status::invalid_argument(e.report())
        }
        _ => Status::internal(e.report()),
    }
}

/// The tensors of an exchange's request.
pub(crate) async fn read_tensors(
    request: Request<Streaming<FlightData>>,
) -> std::result::Result<Tensors, Status> {
    let stream = request
        .into_inner()
        .map_err(|s| FlightError::Tonic(Box::new(s)));
    let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(stream)
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot read the request: {e}")))?;
    decode(&batches).map_err(|e| status_of(&e))
}

/// An exchange's response carrying `out`.
pub(crate) fn tensors_response(
    out: &Tensors,
) -> std::result::Result<Response<FlightStream<FlightData>>, Status> {
    let batch = encode(out).map_err(|e| status_of(&e))?;
    let data = FlightDataEncoderBuilder::new()
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Ok(Response::new(data.boxed()))
}

/// How one exchange ended.
pub(crate) enum Outcome {
    /// The server's answer.
    Answer(Tensors),
    /// The server refused the batch (`INVALID_ARGUMENT`: an input error, not retried) or its model
    /// failed (`INTERNAL`: retried).
    Failed(Error),
    /// The server is gone or going (any other status, or the transport failed): why.
    Gone(String),
}

/// Sends `inputs` in one `DoExchange` call and reads the answer. The first message carries the
/// [`DESCRIPTOR`] command (some servers, pyarrow.flight's, need a descriptor).
pub(crate) async fn exchange(client: &mut FlightClient, inputs: &Tensors) -> Result<Outcome> {
    let batch = encode(inputs)?;
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(DESCRIPTOR)))
        .build(futures::stream::iter([Ok(batch)]))
        .map(|r| r.map_err(|e| FlightError::ExternalError(Box::new(e))));
    let data: Vec<std::result::Result<FlightData, FlightError>> = data.collect().await;
    let result: std::result::Result<Vec<RecordBatch>, FlightError> = async {
        let response = client.do_exchange(futures::stream::iter(data)).await?;
        response.try_collect().await
    }
    .await;
    Ok(match result {
        Ok(batches) => Outcome::Answer(decode(&batches)?),
        Err(FlightError::Tonic(s)) => {
            let msg = s.message().to_string();
            match s.code() {
                tonic::Code::InvalidArgument => Outcome::Failed(Error::input(msg)),
                tonic::Code::Internal => Outcome::Failed(Error::external(msg)),
                code => Outcome::Gone(format!("{code:?}: {msg}")),
            }
        }
        Err(e) => Outcome::Gone(e.to_string()),
    })
}

type Job = (Tensors, oneshot::Sender<Result<Tensors>>);

/// The Flight service of `weir serve-model`: runs every exchanged batch on one backend thread.
struct ModelServer {
    jobs: Mutex<mpsc::Sender<Job>>,
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The stream type of every Flight method's answer.
pub(crate) type FlightStream<T> = BoxStream<'static, std::result::Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for ModelServer {
    crate::not_offered::flight_stream_types!();

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the instance is shutting down"));
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(self.in_flight.clone());
        let inputs = read_tensors(request).await?;
        let (tx, rx) = oneshot::channel();
        self.jobs
            .lock()
            .map_err(|_| Status::internal("the job channel lock is poisoned"))?
            .send((inputs, tx))
            .map_err(|_| Status::unavailable("the model thread has stopped"))?;
        let out = rx
            .await
            .map_err(|_| Status::unavailable("the model thread has stopped"))?
            .map_err(|e| status_of(&e))?;
        drop(guard);
        tensors_response(&out)
    }

    crate::not_offered::flight_not_offered!(
        handshake,
        list_flights,
        get_flight_info,
        poll_flight_info,
        get_schema,
        do_get,
        do_put,
        do_action,
        list_actions
    );
}

/// What `weir serve-model` is given.
#[derive(Debug, Clone)]
pub struct ServeModelOptions {
    /// The model file.
    pub model: PathBuf,
    /// Intra-op threads.
    pub cpus: usize,
    /// GPUs (CUDA execution provider).
    pub gpus: usize,
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// After SIGTERM: longest time to finish the requests in flight before exiting.
    pub grace: Duration,
    /// Shut down (as on SIGTERM) when stdin reaches its end: the process that started this one
    /// holds the other end of the pipe, so the instance ends with it even after a `kill -9`.
    pub exit_with_parent: bool,
}

/// Runs `weir serve-model`: loads the model and runs a warm-up batch, listens on 127.0.0.1,
/// prints `listening on 127.0.0.1:PORT` (one line on stdout, the signal that it is ready), and
/// answers `DoExchange` calls until SIGTERM or SIGINT. Then it refuses new calls
/// (`UNAVAILABLE`), waits up to `grace` for the ones in flight, and returns.
pub async fn serve_model(opts: ServeModelOptions) -> Result<()> {
    let backend_opts = BackendOptions {
        cpus: opts.cpus,
        gpus: opts.gpus,
        spin: false,
    };
    let (jobs, rx) = mpsc::channel::<Job>();
    let (loaded_tx, loaded_rx) = oneshot::channel::<Result<()>>();
    let model = opts.model.clone();
    std::thread::Builder::new()
        .name("weir-serve-model".into())
        .spawn(move || {
            let mut backend = match load(&model, &backend_opts) {
                Ok(b) => {
                    let _ = loaded_tx.send(Ok(()));
                    b
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                    return;
                }
            };
            while let Ok((inputs, reply)) = rx.recv() {
                let rows = inputs
                    .first()
                    .and_then(|(_, t)| t.shape.first().copied())
                    .unwrap_or(0);
                let out = backend.run(inputs).and_then(|out| {
                    weir_infer::pool::check_outputs(
                        "service 'serve-model'",
                        backend.info(),
                        rows,
                        out,
                    )
                });
                let _ = reply.send(out);
            }
        })
        .map_err(|e| Error::internal("cannot start the model thread").with_source(e))?;
    loaded_rx
        .await
        .map_err(|_| Error::internal("the model thread died while loading"))??;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
        .await
        .map_err(|e| {
            Error::io(format!("cannot listen on 127.0.0.1:{}", opts.port)).with_source(e)
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the listening address").with_source(e))?;
    let draining = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let server = ModelServer {
        jobs: Mutex::new(jobs),
        draining: draining.clone(),
        in_flight: in_flight.clone(),
    };
    println!("listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(FlightServiceServer::new(server))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stop_rx.await;
            },
        );
    let mut serve = Box::pin(serve);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::internal("cannot install the SIGTERM handler").with_source(e))?;
    let (orphan_tx, orphan_rx) = oneshot::channel::<()>();
    // Without the watcher the sender stays here, so the branch below never fires.
    let mut _unwatched = None;
    if opts.exit_with_parent {
        std::thread::Builder::new()
            .name("weir-serve-parent".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = orphan_tx.send(());
            })
            .map_err(|e| Error::internal("cannot start the stdin watcher").with_source(e))?;
    } else {
        _unwatched = Some(orphan_tx);
    }
    tokio::select! {
        r = &mut serve => return r.map_err(|e| Error::external("the flight server failed").with_source(e)),
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Ok(()) = orphan_rx => eprintln!("serve-model: stdin closed (the parent ended)"),
    }
    draining.store(true, Ordering::SeqCst);
    let n = in_flight.load(Ordering::SeqCst);
    eprintln!(
        "serve-model: shutting down, {n} requests in flight, grace {:?}",
        opts.grace
    );
    let deadline = tokio::time::Instant::now() + opts.grace;
    while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = in_flight.load(Ordering::SeqCst);
    let _ = stop_tx.send(());
    // Let the last answers leave; requests still running past the grace period are handed back
    // (their callers see the connection close and send them elsewhere).
    let _ = tokio::time::timeout(Duration::from_millis(500), serve).await;
    eprintln!("serve-model: stopped ({left} requests handed back)");
    Ok(())
}

fn load(model: &Path, opts: &BackendOptions) -> Result<Box<dyn Backend>> {
    let mut b: Box<dyn Backend> = Box::new(OrtBackend::load(model, opts)?);
    let inputs = weir_infer::pool::warmup_inputs(b.info())?;
    b.run(inputs)?;
    Ok(b)
}

/// A backend whose model runs in another process (or anywhere reachable over loopback Flight).
pub struct FlightBackend {
    rt: tokio::runtime::Runtime,
    client: FlightClient,
    info: ModelInfo,
    healthy: bool,
    child: Option<std::process::Child>,
    addr: String,
}

impl std::fmt::Debug for FlightBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightBackend")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FlightBackend {
    /// Connects to the server at `addr` (`127.0.0.1:PORT`) serving a model whose metadata is
    /// `info`; `child` is the server's process when this backend owns it (killed on drop).
    pub fn connect(
        addr: &str,
        info: ModelInfo,
        child: Option<std::process::Child>,
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::internal("cannot build a runtime for a flight client").with_source(e)
            })?;
        let url = format!("http://{addr}");
        let channel = rt.block_on(async {
            tonic::transport::Channel::from_shared(url.clone())
                .map_err(|e| Error::config(format!("bad instance address {url}")).with_source(e))?
                .connect()
                .await
                .map_err(|e| {
                    Error::external(format!("cannot connect to the instance at {url}"))
                        .with_source(e)
                })
        })?;
        Ok(FlightBackend {
            rt,
            client: FlightClient::new(channel),
            info,
            healthy: true,
            child,
            addr: addr.to_string(),
        })
    }
}

impl Drop for FlightBackend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Backend for FlightBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn run(&mut self, inputs: Tensors) -> Result<Tensors> {
        let addr = &self.addr;
        match self.rt.block_on(exchange(&mut self.client, &inputs))? {
            Outcome::Answer(out) => Ok(out),
            Outcome::Failed(e) => Err(e),
            Outcome::Gone(why) => {
                self.healthy = false;
                Err(Error::external(format!(
                    "the instance at {addr} is gone ({why})"
                )))
            }
        }
    }

    fn healthy(&self) -> bool {
        self.healthy
    }
}

/// A factory starting one `weir serve-model` process per instance: `command` is the executable
/// and the arguments before the model options (`weir serve-model`, or a Python instance's
/// interpreter and script); `--model`, `--cpus`, `--port 0` and `--exit-with-parent` are
/// appended. Its stdin is a pipe this process holds open (so it ends when this process does,
/// however that happens). It waits for the `listening on ADDR` line, connects, and records each
/// process id in `pids`.
pub fn process_factory(
    command: Vec<String>,
    model: PathBuf,
    cpus: usize,
    pids: Arc<Mutex<Vec<u32>>>,
) -> BackendFactory {
    Arc::new(move |index| {
        let (exe, args) = command
            .split_first()
            .ok_or_else(|| Error::config("the instance command is empty"))?;
        let mut child = std::process::Command::new(exe)
            .args(args)
            .arg("--model")
            .arg(&model)
            .arg("--cpus")
            .arg(cpus.to_string())
            .arg("--port")
            .arg("0")
            .stdout(std::process::Stdio::piped())
            .arg("--exit-with-parent")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::external(format!("cannot start instance {index} ({exe})")).with_source(e)
            })?;
        if let Ok(mut p) = pids.lock() {
            p.push(child.id());
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::internal("the instance's stdout is not piped"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| {
                Error::external(format!("cannot read from instance {index}")).with_source(e)
            })?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait().ok();
            return Err(Error::external(format!(
                "instance {index} ({exe}) did not start (said {:?}, exit {status:?})",
                line.trim()
            )));
        };
        let addr = addr.to_string();
        let info = ModelInfo::load(&model)?;
        Ok(Box::new(FlightBackend::connect(&addr, info, Some(child))?) as Box<dyn Backend>)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int64Array};

    #[test]
    fn tensors_round_trip_in_chunks() {
        let n = 3 * CHUNK / 4 + 7; // f32: 3 full chunks and a bit
        let big = Float32Array::from_iter_values((0..n).map(|i| i as f32));
        let ids = Int64Array::from(vec![1, -2, 3, 4, 5, 6]).slice(2, 4);
        let tensors: Tensors = vec![
            (
                "x".into(),
                HostTensor::try_new(vec![n], Arc::new(big)).unwrap(),
            ),
            (
                "ids".into(),
                HostTensor::try_new(vec![2, 2], Arc::new(ids)).unwrap(),
            ),
        ];
        let batch = encode(&tensors).unwrap();
        assert_eq!(batch.num_rows(), 5);
        let back = decode(&[batch.slice(0, 2), batch.slice(2, 3)]).unwrap();
        assert_eq!(back.len(), 2);
        for ((a, x), (b, y)) in tensors.iter().zip(&back) {
            assert_eq!(a, b);
            assert_eq!(x.shape, y.shape);
            assert_eq!(x.data.to_data(), y.data.to_data());
        }
        let e = decode(&[encode(&tensors[1..].to_vec()).unwrap().slice(0, 0)]);
        assert!(e.unwrap().is_empty());
    }
}
