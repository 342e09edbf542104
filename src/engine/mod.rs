//! The serving engine: an `EngineCore` stepped on its own thread, an output thread that
//! turns its results into events (so output processing of step N overlaps step N+1), and
//! a thread-safe front: submit and abort from any thread, poll events from any thread.

pub mod core;
pub mod request_json;

pub use self::core::{CoreRequest, EngineCore, Limits, ModelInfo};

use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{Model, Tokenizer};
use crate::output::{Event, OutputProcessor};
use crate::sample::SamplingParams;
use crate::sched::{EngineCoreOutput, FinishReason, RequestId, SchedulerStats};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Command {
    Add(RequestId, Box<CoreRequest>, Instant),
    /// Ends every sequence of a request (abort).
    Finish(RequestId, FinishReason),
    /// Ends one sequence that a stop string ended.
    FinishSequence(RequestId),
    Shutdown,
}

enum OutMsg {
    Register(RequestId, Vec<u32>, Arc<SamplingParams>, Instant),
    Outputs(Vec<EngineCoreOutput>),
    Fail(String),
    RequestFailed(RequestId, String),
}

/// State shared by the front, the engine thread and the output thread.
struct Shared {
    events: Mutex<VecDeque<Event>>,
    events_ready: Condvar,
    metrics: Mutex<Metrics>,
    shutdown: AtomicBool,
    /// Set when the engine thread panicked: the engine refuses further work.
    failure: Mutex<Option<String>>,
    /// Called (on an engine thread) whenever events become available.
    notify: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl Shared {
    fn push_events(&self, events: impl IntoIterator<Item = Event>) {
        let mut q = self.events.lock();
        let before = q.len();
        q.extend(events);
        let added = q.len() > before;
        drop(q);
        if added {
            self.events_ready.notify_all();
            if let Some(f) = self.notify.lock().clone() {
                f();
            }
        }
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    commands: Mutex<Sender<Command>>,
    next_id: AtomicU64,
    limits: Limits,
    structured: Arc<crate::structured::LazyCompiler>,
    info: ModelInfo,
    engine_thread: Option<JoinHandle<()>>,
    output_thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Loads `cfg.model` and starts the engine threads.
    pub fn new(cfg: EngineConfig) -> Result<Engine> {
        let model = Model::load(&cfg.model)?;
        Self::from_model(model, cfg)
    }

    pub fn from_model(model: Model, cfg: EngineConfig) -> Result<Engine> {
        let (core, info) = EngineCore::new(model, cfg)?;
        let limits = core.limits().clone();
        let structured = core.structured_compiler();
        let shared = Arc::new(Shared {
            events: Mutex::new(VecDeque::new()),
            events_ready: Condvar::new(),
            metrics: Mutex::new(Metrics::default()),
            shutdown: AtomicBool::new(false),
            failure: Mutex::new(None),
            notify: Mutex::new(None),
        });
        let (cmd_tx, cmd_rx) = channel();
        let (out_tx, out_rx) = channel();
        let processor = OutputProcessor::new(info.tokenizer.clone());
        let sh = shared.clone();
        let finish_tx = cmd_tx.clone();
        let output_thread = std::thread::Builder::new()
            .name("llmrt-output".into())
            .spawn(move || output_loop(processor, out_rx, finish_tx, sh))
            .map_err(|e| Error::InvalidRequest(format!("cannot start the output thread: {e}")))?;
        let sh = shared.clone();
        let engine_thread = std::thread::Builder::new()
            .name("llmrt-engine".into())
            .spawn(move || engine_loop(core, cmd_rx, out_tx, sh))
            .map_err(|e| Error::InvalidRequest(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            shared,
            commands: Mutex::new(cmd_tx),
            next_id: AtomicU64::new(0),
            limits,
            structured,
            info,
            engine_thread: Some(engine_thread),
            output_thread: Some(output_thread),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.info.tokenizer
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validates and queues a request (tokenizing its `bad_words`); returns its id at
    /// once. The request's events are delivered through `poll`.
    pub fn add_request(&self, mut req: CoreRequest) -> Result<RequestId> {
        if let Some(msg) = self.shared.failure.lock().clone() {
            return Err(Error::EngineFailed(msg));
        }
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(Error::EngineFailed("the engine is shut down".into()));
        }
        req.params.update_from_tokenizer(&self.info.tokenizer)?;
        self.limits.validate(&req)?;
        // Compiled here, on the submitting thread: an invalid schema or grammar is refused
        // now, and the engine thread never waits for a compilation.
        if let (Some(spec), None) = (&req.params.structured_outputs, &req.matcher) {
            req.matcher = Some(self.structured.compile(spec)?);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Add(id, Box::new(req), Instant::now()))?;
        Ok(id)
    }

    /// Tokenizes `prompt` (adding the tokenizer's special tokens, e.g. BOS) and submits it.
    pub fn add_prompt(&self, prompt: &str, params: SamplingParams) -> Result<RequestId> {
        let prompt_token_ids = self.info.tokenizer.encode(prompt, true)?;
        self.add_request(CoreRequest {
            prompt_token_ids,
            params,
            ..Default::default()
        })
    }

    /// Aborts a request. Its final event (reason `abort`) arrives through `poll`, unless it
    /// had already finished; unknown ids are ignored.
    pub fn abort(&self, id: RequestId) -> Result<()> {
        self.send(Command::Finish(id, FinishReason::Abort))
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.commands
            .lock()
            .send(cmd)
            .map_err(|_| Error::EngineFailed("the engine thread has stopped".into()))
    }

    /// Takes up to `max_events` events, waiting at most `timeout` for the first one.
    /// Returns early (possibly empty) when the engine shuts down.
    pub fn poll(&self, max_events: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.events.lock();
        while q.is_empty() && !self.shared.shutdown.load(Ordering::Acquire) {
            if self
                .shared
                .events_ready
                .wait_until(&mut q, deadline)
                .timed_out()
            {
                break;
            }
        }
        let n = q.len().min(max_events);
        q.drain(..n).collect()
    }

    /// Events waiting to be polled.
    pub fn num_pending_events(&self) -> usize {
        self.shared.events.lock().len()
    }

    /// Calls `f` (on a library thread, without locks held) whenever events become available.
    pub fn set_notify(&self, f: Option<Arc<dyn Fn() + Send + Sync>>) {
        *self.shared.notify.lock() = f;
    }

    pub fn metrics(&self) -> Metrics {
        self.shared.metrics.lock().clone()
    }

    /// Stops the engine: aborts what runs, joins the threads. Also done on drop.
    pub fn shutdown(&mut self) {
        if let Some(t) = self.engine_thread.take() {
            let _ = self.send(Command::Shutdown);
            let _ = t.join();
        }
        if let Some(t) = self.output_thread.take() {
            let _ = t.join();
        }
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.events_ready.notify_all();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn update_gauges(metrics: &Mutex<Metrics>, s: SchedulerStats) {
    let mut m = metrics.lock();
    m.num_requests_running = s.num_running;
    m.num_requests_waiting = s.num_waiting;
    m.kv_cache_usage_ratio = s.kv_cache_usage;
    m.num_kv_blocks = s.num_blocks;
    m.num_free_kv_blocks = s.num_free_blocks;
    m.prefix_cache_queries = s.prefix_cache_queries;
    m.prefix_cache_hits = s.prefix_cache_hits;
    m.num_preemptions = s.num_preemptions;
    m.structured_output_masks = s.structured_masks;
    m.structured_output_mask_seconds = s.structured_mask_seconds;
}

fn engine_loop(
    mut core: EngineCore,
    commands: Receiver<Command>,
    out: Sender<OutMsg>,
    shared: Arc<Shared>,
) {
    update_gauges(&shared.metrics, core.stats());
    'serve: loop {
        // Block only when idle; otherwise take what has arrived and step.
        let first = if core.has_unfinished() {
            commands.try_recv().ok()
        } else {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => break 'serve,
            }
        };
        for cmd in first
            .into_iter()
            .chain(std::iter::from_fn(|| commands.try_recv().ok()))
        {
            match cmd {
                Command::Add(id, req, arrival) => {
                    let _ = out.send(OutMsg::Register(
                        id,
                        req.prompt_token_ids.clone(),
                        Arc::new(req.params.clone()),
                        arrival,
                    ));
                    if let Err(e) = core.add_request(id, *req) {
                        let _ = out.send(OutMsg::RequestFailed(id, e.to_string()));
                    }
                }
                Command::Finish(id, reason) => {
                    let outputs = core.finish_request(id, reason);
                    if !outputs.is_empty() {
                        let _ = out.send(OutMsg::Outputs(outputs));
                    }
                }
                Command::FinishSequence(seq_id) => {
                    // A stop string: the output thread has emitted the sequence's last
                    // event; it still learns whether the request ended.
                    if let Some(o) = core.finish_sequence(seq_id, FinishReason::Stop) {
                        let _ = out.send(OutMsg::Outputs(vec![o]));
                    }
                }
                Command::Shutdown => {
                    let finals = core.finish_all(FinishReason::Abort);
                    let _ = out.send(OutMsg::Outputs(finals));
                    break 'serve;
                }
            }
        }
        if core.has_unfinished() {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.step())) {
                Ok(outputs) => {
                    update_gauges(&shared.metrics, core.stats());
                    if !outputs.is_empty() {
                        let _ = out.send(OutMsg::Outputs(outputs));
                    }
                }
                Err(panic) => {
                    let msg = panic_message(&panic);
                    *shared.failure.lock() = Some(msg.clone());
                    let _ = out.send(OutMsg::Fail(msg));
                    break 'serve;
                }
            }
        } else {
            update_gauges(&shared.metrics, core.stats());
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("internal error: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("internal error: {s}")
    } else {
        "internal error".into()
    }
}

fn output_loop(
    mut processor: OutputProcessor,
    messages: Receiver<OutMsg>,
    commands: Sender<Command>,
    shared: Arc<Shared>,
) {
    for msg in messages {
        match msg {
            OutMsg::Register(id, prompt, params, arrival) => {
                processor.register(id, &prompt, &params, arrival)
            }
            OutMsg::Outputs(outputs) => {
                let mut events = Vec::with_capacity(outputs.len());
                {
                    let mut m = shared.metrics.lock();
                    for o in outputs {
                        events.extend(processor.process(o, &mut m));
                    }
                }
                // Stop strings found: the engine finishes those requests (and emits
                // nothing more for them).
                for seq_id in processor.take_stopped() {
                    let _ = commands.send(Command::FinishSequence(seq_id));
                }
                shared.push_events(events);
            }
            OutMsg::Fail(msg) => shared.push_events(processor.fail_all(&msg)),
            OutMsg::RequestFailed(id, msg) => shared.push_events(processor.fail_one(id, &msg)),
        }
    }
}
