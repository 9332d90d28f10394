//! Starting and supervising a job: the executors, the wiring of channels between subtasks, and the
//! handle through which a caller watches, stops and awaits the job.
//!
//! Two tokio runtimes are used. The *task* runtime (one worker per declared CPU) runs the task loops,
//! where operator hooks do their CPU work; the *io* runtime runs network and object-store IO so that
//! a busy operator never delays a timer or a socket. Blocking work goes through `spawn_blocking`.

use crate::channel::{Receiver, Sender, channel};
use crate::checkpointing::{CheckpointSetup, CheckpointStats, Driver, TaskHandle};
use crate::graph::{JobGraph, NodeKind, Partitioning};
use crate::inflight::InputKeys;
use crate::input::InputGate;
use crate::metrics::{MetricsRegistry, NodeMetrics, NodeRole, OperatorMetrics};
use crate::observe::{CheckpointHistory, JobControl, Topology};
use crate::operator::{OperatorContext, TaskInfo};
use crate::partition::EdgeRouter;
use crate::physical::{PhysicalPlan, plan};
use crate::task::{
    ChainedOperator, CheckpointLink, Head, InFlightSetup, Outputs, Task, TaskEnd, Watermarks,
    is_secondary,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_checkpoint::{CheckpointStore, Manifest, TaskKey};
use weir_types::{Error, KeyGroupRange, Result};

/// How the whole job ended: whether a stop ended it early, and what its checkpoints did.
type Outcome = (bool, Option<CheckpointStats>);

/// What a task or the checkpoint driver ended with.
enum Ended {
    Task(TaskEnd),
    Driver(CheckpointStats),
}

/// The executors a job runs on.
#[derive(Debug)]
pub struct Runtime {
    tasks: tokio::runtime::Runtime,
    io: tokio::runtime::Runtime,
}

impl Runtime {
    /// Executors with `cpu_threads` task workers (at least 1) and two IO workers.
    pub fn new(cpu_threads: usize) -> Result<Self> {
        let tasks = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpu_threads.max(1))
            .thread_name("weir-task")
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start the task executor").with_source(e))?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-io")
            .enable_all()
            .build()
            .map_err(|e| Error::internal("cannot start the io executor").with_source(e))?;
        Ok(Runtime { tasks, io })
    }

    /// The task executor's handle.
    pub fn task_handle(&self) -> &tokio::runtime::Handle {
        self.tasks.handle()
    }

    /// The IO executor's handle.
    pub fn io_handle(&self) -> &tokio::runtime::Handle {
        self.io.handle()
    }

    /// Plans and starts `graph`. Fails before anything runs if the graph is invalid or an instance
    /// cannot be made.
    pub fn start(&self, graph: JobGraph) -> Result<JobHandle> {
        self.start_with(graph, None)
    }

    /// Plans and starts `graph`, taking checkpoints as `checkpoint` says and restoring from its
    /// `restore` manifest (at any parallelism) when given.
    pub fn start_with(
        &self,
        graph: JobGraph,
        checkpoint: Option<CheckpointSetup>,
    ) -> Result<JobHandle> {
        let plan = plan(&graph)?;
        let unaligned = checkpoint
            .as_ref()
            .is_some_and(|c| c.config.mode == weir_checkpoint::CheckpointMode::Unaligned);
        if unaligned
            && let Some(e) = graph
                .edges
                .iter()
                .find(|e| e.partitioning == Partitioning::Broadcast)
        {
            return Err(Error::config(format!(
                "unaligned checkpoints do not support broadcast edges yet (from '{}' to '{}'); use 'checkpoint.mode: aligned'",
                graph.nodes[e.from].name, graph.nodes[e.to].name
            )));
        }
        let metrics = MetricsRegistry::default();
        let stop = CancellationToken::new();
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut handles = BTreeMap::new();
        let link = checkpoint.as_ref().map(|setup| Link {
            events: events_tx,
            handles: &mut handles,
            unaligned,
            store: setup.store.clone(),
            restore: setup.restore.clone().map(Arc::new),
            incremental: setup.config.incremental_config(),
        });
        let tasks = wire(&graph, &plan, &metrics, &stop, self.io.handle(), link)?;
        let mut set = JoinSet::new();
        let history = CheckpointHistory::default();
        let mut driver_commands = None;
        if let Some(setup) = &checkpoint {
            let mut parallelism: HashMap<String, u32> = graph
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.parallelism))
                .collect();
            if unaligned {
                for c in &plan.chains {
                    let head = &graph.nodes[c.nodes[0]];
                    if !matches!(head.kind, NodeKind::Source(_)) {
                        parallelism.insert(crate::inflight::node_name(&head.name), c.parallelism);
                    }
                }
            }
            let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
            driver_commands = Some(commands_tx);
            let driver = Driver::new(
                graph.config.name.clone(),
                graph.config.max_parallelism,
                parallelism,
                setup,
                handles,
                events_rx,
                crate::observe::DriverWatch {
                    history: history.clone(),
                    commands: commands_rx,
                },
            )?;
            set.spawn_on(
                async move { driver.run().await.map(Ended::Driver) },
                self.io.handle(),
            );
        }
        for t in tasks {
            set.spawn_on(
                async move { t.run().await.map(Ended::Task) },
                self.tasks.handle(),
            );
        }
        let supervisor = self.tasks.spawn(supervise(set));
        Ok(JobHandle {
            name: graph.config.name.clone(),
            metrics,
            control: JobControl {
                stop: stop.clone(),
                driver: driver_commands,
            },
            stop,
            supervisor: Some(supervisor),
            started: Instant::now(),
            description: plan.describe(&graph),
            topology: Topology::of(&graph, &plan),
            history: checkpoint.is_some().then_some(history),
        })
    }

    /// Runs `graph` to the end on this thread and returns its report.
    pub fn run(&self, graph: JobGraph) -> Result<JobReport> {
        self.run_with(graph, None)
    }

    /// Runs `graph` with checkpoints (see [`Runtime::start_with`]) to the end on this thread.
    pub fn run_with(
        &self,
        graph: JobGraph,
        checkpoint: Option<CheckpointSetup>,
    ) -> Result<JobReport> {
        let handle = self.start_with(graph, checkpoint)?;
        self.tasks.block_on(handle.wait())
    }

    /// Blocks this thread on `fut` on the task executor.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.tasks.block_on(fut)
    }
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The job's name.
    pub name: String,
    /// Wall-clock time from start to end.
    pub elapsed: Duration,
    /// Whether a stop request ended the sources early.
    pub stopped_early: bool,
    /// Final counters per node.
    pub nodes: Vec<NodeMetrics>,
    /// What happened to checkpoints, when the job took them.
    pub checkpoints: Option<CheckpointStats>,
}

/// A running job.
#[derive(Debug)]
pub struct JobHandle {
    name: String,
    metrics: MetricsRegistry,
    stop: CancellationToken,
    supervisor: Option<tokio::task::JoinHandle<Result<Outcome>>>,
    started: Instant,
    description: String,
    topology: Topology,
    history: Option<CheckpointHistory>,
    control: JobControl,
}

impl JobHandle {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The graph as planned: steps, edges, chains.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The checkpoint history, when the job takes checkpoints.
    pub fn checkpoint_history(&self) -> Option<&CheckpointHistory> {
        self.history.as_ref()
    }

    /// Stop and "checkpoint now", for whoever watches the job (kept after [`wait`](Self::wait)
    /// takes the handle).
    pub fn control(&self) -> JobControl {
        self.control.clone()
    }

    /// Live metrics.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// Asks the sources to stop; everything already read is processed and written, then the job
    /// ends as if the input had ended.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// A token that is cancelled when a stop is requested.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// When the job started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The physical plan, rendered.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether every task has ended.
    pub fn is_finished(&self) -> bool {
        self.supervisor.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Waits for the end; the first root-cause error of any task fails the job (and stops the rest).
    pub async fn wait(mut self) -> Result<JobReport> {
        let Some(sup) = self.supervisor.take() else {
            return Err(Error::internal("job awaited twice"));
        };
        let (stopped_early, checkpoints) = sup
            .await
            .map_err(|e| Error::internal("the job supervisor panicked").with_source(e))??;
        Ok(JobReport {
            name: self.name.clone(),
            elapsed: self.started.elapsed(),
            stopped_early,
            nodes: self.metrics.snapshot(),
            checkpoints,
        })
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if let Some(s) = self.supervisor.take() {
            s.abort();
        }
    }
}

/// Joins every task; on the first failure aborts the others and returns the root cause.
async fn supervise(mut set: JoinSet<Result<Ended>>) -> Result<Outcome> {
    let mut stopped = false;
    let mut stats = None;
    let mut first: Option<Error> = None;
    while let Some(joined) = set.join_next().await {
        let res = match joined {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => continue,
            Err(e) => Err(Error::internal("a task panicked").with_source(e)),
        };
        match res {
            Ok(Ended::Task(TaskEnd::Stopped)) => stopped = true,
            Ok(Ended::Task(TaskEnd::Finished)) => {}
            Ok(Ended::Driver(s)) => stats = Some(s),
            Err(e) => {
                let replace = match &first {
                    None => true,
                    Some(f) => is_secondary(f) && !is_secondary(&e),
                };
                if first.is_none() {
                    set.abort_all();
                }
                if replace {
                    first = Some(e);
                }
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok((stopped, stats)),
    }
}

/// What the wiring of a checkpointing job needs.
struct Link<'a> {
    /// Where tasks send their acks.
    events: tokio::sync::mpsc::UnboundedSender<crate::task::TaskEvent>,
    /// Filled with each task's control channel, for the driver.
    handles: &'a mut BTreeMap<TaskKey, TaskHandle>,
    unaligned: bool,
    store: CheckpointStore,
    restore: Option<Arc<Manifest>>,
    /// How tasks write incremental snapshots.
    incremental: weir_checkpoint::IncrementalConfig,
}

/// Creates every task of the plan with its channels.
fn wire(
    graph: &JobGraph,
    plan: &PhysicalPlan,
    registry: &MetricsRegistry,
    stop: &CancellationToken,
    io: &tokio::runtime::Handle,
    mut checkpoint: Option<Link<'_>>,
) -> Result<Vec<Task>> {
    let unaligned = checkpoint.as_ref().is_some_and(|c| c.unaligned);
    let checkpointing = checkpoint.is_some();
    let log_stores: Option<CheckpointStore> = checkpoint.as_ref().map(|c| c.store.clone());
    let cfg = &graph.config;
    // Metrics per node and subtask, registered in graph order.
    let node_metrics: Vec<Vec<Arc<OperatorMetrics>>> = graph
        .nodes
        .iter()
        .map(|n| {
            let role = match n.kind {
                NodeKind::Source(_) => NodeRole::Source,
                NodeKind::Operator(_) => NodeRole::Operator,
                NodeKind::Sink(_) => NodeRole::Sink,
            };
            registry.register(&n.name, role, n.parallelism)
        })
        .collect();

    // Channels: per chain edge (and the dead-letter edges), senders per producer subtask and
    // receivers per consumer subtask.
    let mut inputs: Vec<Vec<Vec<Receiver>>> = plan
        .chains
        .iter()
        .map(|c| (0..c.parallelism).map(|_| Vec::new()).collect())
        .collect();
    let mut routers: Vec<Vec<Vec<EdgeRouter>>> = plan
        .chains
        .iter()
        .map(|c| (0..c.parallelism).map(|_| Vec::new()).collect())
        .collect();
    let mut dl_routers: Vec<Vec<Option<EdgeRouter>>> = plan
        .chains
        .iter()
        .map(|c| (0..c.parallelism).map(|_| None).collect())
        .collect();

    let connect = |from: usize,
                   to: usize,
                   partitioning: &Partitioning,
                   inputs: &mut Vec<Vec<Vec<Receiver>>>| {
        let pf = plan.chains[from].parallelism;
        let mut per_producer: Vec<Vec<Sender>> = (0..pf).map(|_| Vec::new()).collect();
        if *partitioning == Partitioning::Forward {
            for i in 0..pf as usize {
                let (tx, rx) = channel(cfg.channel_capacity_bytes);
                per_producer[i].push(tx);
                inputs[to][i].push(rx);
            }
        } else {
            for senders in per_producer.iter_mut() {
                for consumer in inputs[to].iter_mut() {
                    let (tx, rx) = channel(cfg.channel_capacity_bytes);
                    senders.push(tx);
                    consumer.push(rx);
                }
            }
        }
        per_producer
            .into_iter()
            .enumerate()
            .map(|(i, s)| EdgeRouter::new(partitioning.clone(), s, i, cfg.max_parallelism))
            .collect::<Vec<_>>()
    };
    // Per chain: how each of its input channels maps rows to key groups, and which logical input
    // of the head node it belongs to (in receiver order).
    let mut in_keys: Vec<Vec<(InputKeys, usize)>> = vec![Vec::new(); plan.chains.len()];
    let keys_of = |p: &Partitioning| match p {
        Partitioning::Hash { keys } => InputKeys::Hash(keys.clone()),
        _ => InputKeys::Any,
    };
    for e in &plan.edges {
        let n = if e.partitioning == Partitioning::Forward {
            1
        } else {
            plan.chains[e.from].parallelism as usize
        };
        in_keys[e.to].extend(std::iter::repeat_n((keys_of(&e.partitioning), e.input), n));
        for (i, r) in connect(e.from, e.to, &e.partitioning, &mut inputs)
            .into_iter()
            .enumerate()
        {
            routers[e.from][i].push(r);
        }
    }
    if let Some(dl) = plan.dead_letter {
        for (c, dl_of_chain) in dl_routers.iter_mut().enumerate() {
            if c == dl {
                continue;
            }
            in_keys[dl].extend(std::iter::repeat_n(
                (InputKeys::Any, 0),
                plan.chains[c].parallelism as usize,
            ));
            for (i, r) in connect(c, dl, &Partitioning::Rebalance, &mut inputs)
                .into_iter()
                .enumerate()
            {
                dl_of_chain[i] = Some(r);
            }
        }
    }

    let mut tasks = Vec::new();
    for (ci, chain) in plan.chains.iter().enumerate() {
        let mut inputs_c = std::mem::take(&mut inputs[ci]).into_iter();
        let mut routers_c = std::mem::take(&mut routers[ci]).into_iter();
        let mut dl_c = std::mem::take(&mut dl_routers[ci]).into_iter();
        for subtask in 0..chain.parallelism {
            let ctx_for = |node: usize| {
                let n = &graph.nodes[node];
                let info = TaskInfo {
                    node: n.name.clone(),
                    subtask,
                    parallelism: n.parallelism,
                    max_parallelism: cfg.max_parallelism,
                };
                let metrics = node_metrics[node][subtask as usize].clone();
                let ctx = OperatorContext::new(info.clone(), cfg.error_policy, metrics, io.clone())
                    .with_restored_state(None, checkpointing)
                    .with_log_store(log_stores.as_ref().map(|s| s.log_store(&n.name)));
                (info, ctx)
            };
            let mut nodes = chain.nodes.iter().copied();
            let mut all_metrics = Vec::new();
            let head_in = inputs_c.next().unwrap_or_default();
            let head = match &graph.nodes[chain.nodes[0]].kind {
                NodeKind::Source(factory) => {
                    let node = nodes.next().unwrap_or_default();
                    let (info, ctx) = ctx_for(node);
                    let source = factory(&info).map_err(|e| e.in_operator(info.node.clone()))?;
                    all_metrics.push(ctx.metrics().clone());
                    Head::Source { source, ctx }
                }
                _ => {
                    node_metrics[chain.nodes[0]][subtask as usize]
                        .set_input_queues(head_in.iter().map(Receiver::gauge).collect());
                    Head::Input {
                        gate: InputGate::new(head_in),
                        input_of: in_keys[ci].iter().map(|(_, i)| *i).collect(),
                    }
                }
            };
            let mut ops = Vec::new();
            for node in nodes {
                let (info, mut ctx) = ctx_for(node);
                if node == chain.nodes[0] {
                    ctx = ctx.with_inputs(graph.inputs(node).count());
                }
                let op = match &graph.nodes[node].kind {
                    NodeKind::Operator(f) | NodeKind::Sink(f) => f(&info),
                    NodeKind::Source(_) => Err(Error::internal("a source inside a chain")),
                }
                .map_err(|e| e.in_operator(info.node.clone()))?;
                all_metrics.push(ctx.metrics().clone());
                ops.push(ChainedOperator { op, ctx });
            }
            let head_node = &graph.nodes[chain.nodes[0]];
            let link = checkpoint.as_mut().map(|c| {
                let key = TaskKey::new(head_node.name.clone(), subtask);
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let is_source = matches!(head_node.kind, NodeKind::Source(_));
                c.handles.insert(
                    key.clone(),
                    TaskHandle {
                        is_source,
                        control: tx,
                    },
                );
                CheckpointLink {
                    key,
                    control: rx,
                    events: c.events.clone(),
                    store: c.store.clone(),
                    io: io.clone(),
                    writes: tokio::task::JoinSet::new(),
                    restore: c.restore.clone(),
                    incremental: c.incremental,
                    trackers: Default::default(),
                    encoded: None,
                }
            });
            let in_flight = (unaligned && matches!(head, Head::Input { .. })).then(|| {
                let node = crate::inflight::node_name(&head_node.name);
                InFlightSetup {
                    replay: None,
                    node,
                    subtask,
                    parallelism: chain.parallelism,
                    inputs: in_keys[ci].clone(),
                    range: KeyGroupRange::for_subtask(
                        cfg.max_parallelism,
                        chain.parallelism,
                        subtask,
                    ),
                    max_parallelism: cfg.max_parallelism,
                }
            });
            tasks.push(Task {
                watermarks: Watermarks::new(ops.len()),
                in_flight,
                pending_ack: None,
                last_snapshot: None,
                checkpoint: link,
                head,
                chain: ops,
                outputs: Outputs {
                    routers: routers_c.next().unwrap_or_default(),
                    dead_letter: dl_c.next().flatten(),
                },
                stop: stop.clone(),
                all_metrics,
            });
        }
    }
    Ok(tasks)
}
