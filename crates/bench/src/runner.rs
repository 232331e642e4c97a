//! Runs a scenario: a dedicated client runtime, the run's namespace, prepare →
//! warm-up → measure → cleanup, the workers and the progress display.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::client::{Api, Connector};
use crate::config::{BenchConfig, Limit};
use crate::error::{Error, Result};
use crate::scenarios::{self, Cause, Outcome, Phase, Scenario, Setup, Ticket};
use crate::summary::{Recorder, RunInfo, Summary};

/// Runs the benchmark `config` describes and returns what it measured.
///
/// The client runs on its own multi-threaded tokio runtime (on its own thread),
/// whatever runtime awaits this future, so a caller sharing the process with a
/// server does not share worker threads with it. When `shutdown` completes the
/// run stops early: before measuring that is an error, during measurement the
/// summary covers what was measured. The namespace is deleted in both cases.
pub async fn run(config: BenchConfig, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    config.validate()?;
    let threads = config
        .client_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(2));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tessera-bench")
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let (interrupt_tx, interrupt_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("tessera-bench".into())
        .spawn(move || {
            let result = runtime.block_on(execute(config, interrupt_rx));
            let _ = done_tx.send(result);
        })
        .map_err(Error::Runtime)?;
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut done_rx => return result.map_err(|_| Error::RuntimeGone)?,
        () = &mut shutdown => {
            tracing::info!("interrupted: stopping and cleaning up");
            let _ = interrupt_tx.send(true);
        }
    }
    done_rx.await.map_err(|_| Error::RuntimeGone)?
}

/// The whole run, on the client runtime.
async fn execute(config: BenchConfig, mut interrupt_rx: watch::Receiver<bool>) -> Result<Summary> {
    let info = scenarios::find(&config.scenario)?;
    let connector = Connector::load(&config.kubeconfig, config.context.as_deref()).await?;
    let apis = (0..config.concurrency).map(|_| connector.api()).collect::<Result<Vec<_>>>()?;
    let progress = Progress::new(config.progress);
    let interrupt = Arc::new(Stop::default());
    {
        let interrupt = Arc::clone(&interrupt);
        tokio::spawn(async move {
            if interrupt_rx.wait_for(|stop| *stop).await.is_ok() {
                interrupt.halt("interrupted");
            }
        });
    }

    let namespace = format!("tessera-bench-{:08x}", rand::random::<u32>());
    let api = apis.first().ok_or_else(|| Error::Config("concurrency must be at least 1".into()))?.clone();
    progress.bar.set_message(format!("creating namespace {namespace}"));
    api.create_namespace(&namespace).await?;
    tracing::debug!(%namespace, scenario = info.name, "prepared namespace");

    let mut scenario = (info.new)();
    let setup = Setup {
        namespace: &namespace,
        apis: &apis,
        connector: &connector,
        options: &config.options,
        limit: config.limit,
        progress: &progress.bar,
    };
    let prepared = tokio::select! {
        result = scenario.prepare(&setup) => result,
        () = interrupt.wait() => Err(Error::Interrupted),
    };
    let scenario: Arc<dyn Scenario> = Arc::from(scenario);
    let measured = match prepared {
        Ok(()) => {
            let run = Run { config: &config, apis: &apis, scenario: &scenario, interrupt: &interrupt, progress: &progress };
            run.warm_up_and_measure(info.name, connector.url()).await
        }
        Err(e) => Err(e),
    };

    if config.options.keep {
        tracing::info!(%namespace, "keeping the benchmark namespace (--keep)");
    } else {
        progress.bar.set_message(format!("cleaning up: deleting namespace {namespace}"));
        if let Err(e) = scenario.cleanup(&api).await {
            tracing::warn!(error = %e, "scenario cleanup failed");
        }
        if let Err(e) = api.delete_namespace(&namespace).await {
            tracing::warn!(error = %e, %namespace, "could not delete the benchmark namespace: delete it by hand");
        }
    }
    progress.bar.finish_and_clear();
    measured
}

/// What the phases share.
struct Run<'a> {
    config: &'a BenchConfig,
    apis: &'a [Api],
    scenario: &'a Arc<dyn Scenario>,
    interrupt: &'a Arc<Stop>,
    progress: &'a Progress,
}

/// Counters and stop signals of one phase, shared by its workers.
struct PhaseState {
    phase: Phase,
    limit: Limit,
    rate: Option<f64>,
    start: Instant,
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    halt: Stop,
}

/// A one-way stop signal with a reason.
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: Notify,
}

/// The progress bar (hidden when disabled or when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
}

// === impl Run ===

impl Run<'_> {
    async fn warm_up_and_measure(&self, scenario: &str, target: String) -> Result<Summary> {
        let config = self.config;
        if !config.warmup.is_zero() {
            let (warm, _, stopped) = self.phase(Phase::Warmup, Limit::Duration(config.warmup)).await?;
            if warm.count() > 0 {
                let summary = warm.summarize(self.info(scenario, target.clone()), config.warmup, None);
                if summary.error_count() > 0 {
                    tracing::warn!(errors = ?summary.errors, samples = ?summary.error_samples, "errors during warm-up");
                }
            }
            if let Some(reason) = stopped {
                if self.interrupt.is_stopped() {
                    return Err(Error::Interrupted);
                }
                tracing::warn!(reason, "warm-up stopped early");
            }
        }
        let (recorder, elapsed, stopped) = self.phase(Phase::Measure, config.limit).await?;
        Ok(recorder.summarize(self.info(scenario, target), elapsed, stopped))
    }

    fn info(&self, scenario: &str, target: String) -> RunInfo {
        RunInfo { scenario: scenario.to_owned(), target, rate: self.config.rate, concurrency: self.config.concurrency }
    }

    /// Runs one phase with every worker; returns the merged measurements, the
    /// phase's wall time and why it stopped early (if it did).
    async fn phase(&self, phase: Phase, limit: Limit) -> Result<(Recorder, Duration, Option<String>)> {
        let state = Arc::new(PhaseState {
            phase,
            limit,
            rate: self.config.rate,
            start: Instant::now(),
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            halt: Stop::default(),
        });
        let ticker = self.progress.track(Arc::clone(&state));
        let workers: Vec<_> = self
            .apis
            .iter()
            .map(|api| tokio::spawn(worker(api.clone(), Arc::clone(self.scenario), Arc::clone(&state), Arc::clone(self.interrupt))))
            .collect();
        let mut merged = Recorder::new();
        let mut failure = None;
        for worker in workers {
            match worker.await {
                Ok(recorder) => merged.merge(recorder),
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let elapsed = state.start.elapsed();
        ticker.abort();
        if let Some(e) = failure {
            return Err(Error::Worker(e));
        }
        let stopped = self.interrupt.reason().or_else(|| state.halt.reason());
        Ok((merged, elapsed, stopped))
    }
}

/// One worker: takes the next ticket until the phase's limit, sends, records.
async fn worker(api: Api, scenario: Arc<dyn Scenario>, state: Arc<PhaseState>, interrupt: Arc<Stop>) -> Recorder {
    let mut recorder = Recorder::new();
    let deadline = match state.limit {
        Limit::Duration(d) => Some(state.start + d),
        Limit::Requests(_) => None,
    };
    loop {
        if state.halt.is_stopped() || interrupt.is_stopped() {
            break;
        }
        let seq = state.next.fetch_add(1, Ordering::Relaxed);
        if let Limit::Requests(n) = state.limit
            && seq >= n
        {
            break;
        }
        // Open loop: request `seq` is due at start + seq / rate, and its latency
        // counts from then, however late the worker gets to it.
        let due = state.rate.map(|rate| state.start + Duration::from_secs_f64(seq as f64 / rate));
        // Past the deadline, or due after it: the phase is over (an open loop
        // that fell behind stops on time too; its latencies show the backlog).
        if let Some(deadline) = deadline
            && (Instant::now() >= deadline || due.is_some_and(|due| due >= deadline))
        {
            break;
        }
        if let Some(due) = due {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = interrupt.wait() => break,
            }
        }
        let begin = due.unwrap_or_else(Instant::now);
        let outcome = tokio::select! {
            outcome = scenario.request(&api, Ticket { phase: state.phase, seq }) => outcome,
            () = interrupt.wait() => break,
        };
        let latency = begin.elapsed();
        if let Outcome::Failed { cause: Cause::Exhausted, detail } = outcome {
            state.halt.halt(&detail);
            break;
        }
        if outcome != Outcome::Ok {
            state.failed.fetch_add(1, Ordering::Relaxed);
        }
        state.done.fetch_add(1, Ordering::Relaxed);
        recorder.record(outcome, latency);
    }
    recorder
}

// === impl Stop ===

impl Stop {
    fn halt(&self, reason: &str) {
        {
            let mut slot = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert_with(|| reason.to_owned());
        }
        self.stopped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Completes once [`halt`](Self::halt) was called.
    async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }
}

// === impl Progress ===

impl Progress {
    fn new(enabled: bool) -> Self {
        let bar = if enabled {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// Shows a phase's progress until the returned task is aborted.
    fn track(&self, state: Arc<PhaseState>) -> tokio::task::JoinHandle<()> {
        let bar = self.bar.clone();
        let (length, label) = match state.limit {
            Limit::Requests(n) => (n, "requests"),
            Limit::Duration(d) => (u64::try_from(d.as_millis()).unwrap_or(u64::MAX), "ms"),
        };
        let phase = match state.phase {
            Phase::Warmup => "warm-up",
            Phase::Measure => "measure",
        };
        bar.set_length(length);
        bar.set_position(0);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix:>7} [{bar:30}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(phase);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let done = state.done.load(Ordering::Relaxed);
                let failed = state.failed.load(Ordering::Relaxed);
                let elapsed = state.start.elapsed();
                let position = match state.limit {
                    Limit::Requests(_) => done,
                    Limit::Duration(_) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                };
                bar.set_position(position.min(length));
                let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
                bar.set_message(format!("{}/{length} {label}, {done} done, {rate:.0} req/s, {failed} errors", position.min(length)));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::config::ScenarioOptions;

    /// Takes `work` per request; every tenth fails; runs out at `exhaust_at`.
    struct Fake {
        work: Duration,
        exhaust_at: u64,
    }

    #[async_trait]
    impl Scenario for Fake {
        async fn prepare(&mut self, _setup: &Setup<'_>) -> Result<()> {
            Ok(())
        }

        async fn request(&self, _api: &Api, ticket: Ticket) -> Outcome {
            if ticket.seq >= self.exhaust_at {
                return Outcome::failed(Cause::Exhausted, "no more inputs");
            }
            tokio::time::sleep(self.work).await;
            if ticket.seq.is_multiple_of(10) { Outcome::failed(Cause::Status(500), "boom") } else { Outcome::Ok }
        }
    }

    async fn measure(concurrency: usize, rate: Option<f64>, limit: Limit, fake: Fake) -> (Summary, Option<String>) {
        let config = BenchConfig {
            concurrency,
            rate,
            limit,
            options: ScenarioOptions::default(),
            progress: false,
            ..BenchConfig::new("tokenreview", "/dev/null")
        };
        let apis: Vec<Api> = (0..concurrency).map(|_| Api::unconnected()).collect();
        let scenario: Arc<dyn Scenario> = Arc::new(fake);
        let interrupt = Arc::new(Stop::default());
        let progress = Progress::new(false);
        let run = Run { config: &config, apis: &apis, scenario: &scenario, interrupt: &interrupt, progress: &progress };
        let (recorder, elapsed, stopped) = run.phase(Phase::Measure, limit).await.unwrap();
        (recorder.summarize(run.info("fake", "https://test".into()), elapsed, stopped.clone()), stopped)
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sends_exactly_the_requests_asked_for() {
        let fake = Fake { work: Duration::from_millis(2), exhaust_at: u64::MAX };
        let (s, stopped) = measure(4, None, Limit::Requests(100), fake).await;
        assert_eq!((s.count, s.ok, s.error_count()), (100, 90, 10));
        assert_eq!(s.errors["500"], 10);
        assert_eq!(stopped, None);
        // 100 requests of 2 ms over 4 workers: 50 ms of (paused, exact) time.
        assert!((s.elapsed_seconds - 0.05).abs() < 0.005, "{s:?}");
        assert!(s.latency_ms.p50 >= 2.0 && s.latency_ms.max < 2.5, "{:?}", s.latency_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn duration_limit_stops_on_time() {
        let fake = Fake { work: Duration::from_millis(10), exhaust_at: u64::MAX };
        let (s, _) = measure(2, None, Limit::Duration(Duration::from_secs(1)), fake).await;
        assert_eq!(s.count, 200, "{s:?}");
        assert!((s.requests_per_second - 200.0).abs() < 5.0, "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_inputs_stop_the_run_and_say_why() {
        let fake = Fake { work: Duration::from_millis(1), exhaust_at: 30 };
        let (s, stopped) = measure(3, None, Limit::Requests(100), fake).await;
        assert_eq!(s.count, 30);
        assert_eq!(stopped.as_deref(), Some("no more inputs"));
        assert_eq!(s.stopped_early.as_deref(), Some("no more inputs"));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_rate_and_counts_the_backlog() {
        // The server keeps up: 100 req/s for 1 s, each taking 1 ms.
        let fake = Fake { work: Duration::from_millis(1), exhaust_at: u64::MAX };
        let (s, _) = measure(2, Some(100.0), Limit::Duration(Duration::from_secs(1)), fake).await;
        assert_eq!(s.count, 100, "{s:?}");
        assert!(s.latency_ms.max < 1.5, "{:?}", s.latency_ms);
        // It cannot (50 ms each, one worker, one due every 10 ms): latency counts
        // from when each request was due, so the queue shows.
        let fake = Fake { work: Duration::from_millis(50), exhaust_at: u64::MAX };
        let (s, _) = measure(1, Some(100.0), Limit::Duration(Duration::from_secs(1)), fake).await;
        assert!(s.count <= 21, "{s:?}");
        assert!(s.latency_ms.max > 500.0, "{:?}", s.latency_ms);
    }

    #[tokio::test]
    async fn stop_wakes_waiters_and_keeps_the_first_reason() {
        let stop = Arc::new(Stop::default());
        let waiter = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move { stop.wait().await })
        };
        tokio::task::yield_now().await;
        stop.halt("first");
        stop.halt("second");
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert!(stop.is_stopped());
        assert_eq!(stop.reason().as_deref(), Some("first"));
        // Waiting after the stop returns at once.
        tokio::time::timeout(Duration::from_secs(1), stop.wait()).await.unwrap();
    }
}
