//! `qa serve`: a JSON API (`POST /v1/answer`), a chat page at `/`, and what operations need
//! (`GET /health`, `/ready`, `/metrics`).
//!
//! A request goes through four steps: admission (at most `--max-concurrent-requests`, else 429
//! before its body is read), tokenization on a blocking thread, the model (one worker thread
//! batches windows of many requests, see [`batcher`]), and decoding on a blocking thread.
//! Bad requests get 4xx with a JSON `{"error": ...}` body: 413 for sizes, 400/415/422 for what
//! is malformed, 429 when full, 503 past `--request-timeout`.

mod admission;
mod batcher;
mod metrics;

use std::any::TypeId;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use qa_model::{Answer, FeatureOutputs, ModelError, OnBackend, QuestionAnswerer, Window};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};

use self::admission::{Backlog, Work};
use self::batcher::{Done, Limits, Submission};
use self::metrics::{Gauges, Metrics};
use crate::cli::ServeArgs;
use crate::predict::load_answerer;

const PAGE: &str = include_str!("page.html");
const MAX_N_BEST: usize = 20;
const ANSWER_ROUTE: &str = "/v1/answer";

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    struct Job<'a> {
        args: &'a ServeArgs,
    }
    impl OnBackend for Job<'_> {
        type Output = ();
        fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
            let answerer = Arc::new(load_answerer::<B>(&self.args.model, device)?);
            serve_model(answerer, self.args)
        }
    }
    qa_model::run_on(args.model.device, Job { args }, &|l| eprintln!("{l}"))
}

/// Starts the inference worker and the HTTP server; returns after a graceful shutdown.
fn serve_model<B: Backend>(
    answerer: Arc<QuestionAnswerer<B>>,
    args: &ServeArgs,
) -> anyhow::Result<()> {
    let (submit, submissions) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let limits = batch_limits::<B>(args);
    eprintln!(
        "forward passes of at most {} window(s) and {} padded tokens (padding <= {:.0} %), \
         waiting <= {:?} for a batch to fill",
        limits.max_windows,
        limits.max_tokens,
        limits.max_padding * 100.0,
        limits.max_delay
    );
    warm_up(&answerer, limits, &shared.backlog)?;
    let worker = start_worker(answerer.clone(), limits, submissions, &shared)?;
    let state = Arc::new(AppState {
        answerer,
        submit,
        shared,
        permits: Arc::new(Semaphore::new(args.max_concurrent_requests as usize)),
        max_concurrent: args.max_concurrent_requests as usize,
        limits: RequestLimits::of(args),
        model: args.model.model.display().to_string(),
    });
    let runtime = tokio::runtime::Runtime::new()?;
    let served = runtime.block_on(serve(state, args));
    // Handlers cut off by the shutdown deadline may still hold blocking threads; do not wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if worker.is_finished() {
        let _ = worker.join();
    }
    served
}

/// Batch limits, with defaults by device where the command line leaves them. On the CPU one
/// window per pass: a forward pass costs about the same per token at any batch size there, so
/// batching only adds padding and waiting (measured in docs/benchmarks.md, "Serving"). On a GPU
/// batching is the whole game.
fn batch_limits<B: Backend>(args: &ServeArgs) -> Limits {
    let on_cpu = TypeId::of::<B>() == TypeId::of::<qa_model::CpuBackend>();
    let (windows, tokens) = if on_cpu { (1, 2048) } else { (64, 16384) };
    Limits {
        max_windows: args.max_batch_windows.unwrap_or(windows) as usize,
        max_tokens: args.max_batch_tokens.unwrap_or(tokens) as usize,
        max_padding: args.max_batch_padding,
        max_delay: args.max_batch_delay,
    }
}

/// Two forward passes over the largest batch of full windows before serving: the first pays for
/// allocation (and, on a GPU, kernel compilation and tuning) so no request does; the second
/// gives admission its first, cautious measure of the model's speed.
fn warm_up<B: Backend>(
    answerer: &QuestionAnswerer<B>,
    limits: Limits,
    backlog: &Backlog,
) -> anyhow::Result<()> {
    let context = "The model reads full windows before it serves. ".repeat(100);
    let prepared = answerer.prepare(&context, &["What does the model read?"], 1)?;
    let window = prepared.windows().swap_remove(0);
    let count = (limits.max_tokens / window.len()).clamp(1, limits.max_windows);
    let batch = vec![&window; count];
    answerer.forward_windows(&batch);
    let started = Instant::now();
    answerer.forward_windows(&batch);
    let took = started.elapsed();
    backlog.measured(window.len() * count, took);
    eprintln!(
        "warm-up: {count} window(s) of {} tokens in {took:.1?}",
        window.len()
    );
    Ok(())
}

/// What the worker and the handlers share.
#[derive(Default)]
struct Shared {
    backlog: Backlog,
    metrics: Metrics,
    worker_running: AtomicBool,
}

/// The model's thread: batches windows until every sender is gone. `/ready` says whether it runs.
fn start_worker<B: Backend>(
    answerer: Arc<QuestionAnswerer<B>>,
    limits: Limits,
    submissions: mpsc::Receiver<Submission>,
    shared: &Arc<Shared>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    struct Running(Arc<Shared>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.worker_running.store(false, Ordering::Release);
        }
    }
    shared.worker_running.store(true, Ordering::Release);
    let running = Running(shared.clone());
    let spawned = std::thread::Builder::new()
        .name("qa-inference".into())
        .spawn(move || {
            let shared = &running.0;
            batcher::run(
                submissions,
                limits,
                &shared.backlog,
                &shared.metrics,
                |windows| answerer.forward_windows(windows),
            );
        });
    Ok(spawned?)
}

/// Per-request limits, checked before any work.
struct RequestLimits {
    max_context_chars: usize,
    max_questions: usize,
    max_queued_windows: usize,
    request_timeout: Duration,
    /// Candidates shown when a request does not say.
    default_n_best: usize,
}

impl RequestLimits {
    fn of(args: &ServeArgs) -> Self {
        RequestLimits {
            max_context_chars: args.max_context_chars,
            max_questions: args.max_questions,
            max_queued_windows: args.max_queued_windows as usize,
            request_timeout: args.request_timeout,
            default_n_best: args.model.n_best,
        }
    }

    /// The request's questions and candidate count, or what is wrong with it.
    fn check(&self, request: AnswerRequest) -> Result<Ask, ApiError> {
        let mut questions = request.questions;
        questions.extend(request.question);
        if questions.len() > self.max_questions {
            return Err(ApiError::unprocessable(format!(
                "{} questions; at most {} per request",
                questions.len(),
                self.max_questions
            )));
        }
        let chars = request.context.chars().count();
        if chars > self.max_context_chars {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "context has {chars} characters; at most {} are accepted",
                    self.max_context_chars
                ),
            ));
        }
        let n_best = request.n_best.unwrap_or(self.default_n_best);
        if n_best == 0 || n_best > MAX_N_BEST {
            return Err(ApiError::unprocessable(format!(
                "n_best must be between 1 and {MAX_N_BEST}"
            )));
        }
        Ok(Ask {
            context: request.context,
            questions,
            n_best,
        })
    }
}

struct Ask {
    context: String,
    questions: Vec<String>,
    n_best: usize,
}

struct AppState<B: Backend> {
    answerer: Arc<QuestionAnswerer<B>>,
    submit: mpsc::Sender<Submission>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    limits: RequestLimits,
    model: String,
}

async fn serve<B: Backend>(state: Arc<AppState<B>>, args: &ServeArgs) -> anyhow::Result<()> {
    // Room for the longest accepted context in UTF-8 plus questions and JSON syntax.
    let body_limit = state.limits.max_context_chars * 4 + 64 * 1024;
    let app = Router::new()
        .route(
            ANSWER_ROUTE,
            post(answer::<B>)
                .route_layer(middleware::from_fn_with_state(state.clone(), admit::<B>)),
        )
        .route("/", get(page))
        .route("/health", get(health::<B>))
        .route("/ready", get(ready::<B>))
        .route("/metrics", get(metrics::<B>))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe::<B>))
        .with_state(state);
    let addr = &args.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    let (stopping, stopped) = oneshot::channel();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let signal = shutdown_signal().await;
        eprintln!("{signal}: no new connections; finishing the requests in flight");
        let _ = stopping.send(());
    });
    let grace = args.shutdown_timeout;
    let deadline = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served?,
        () = deadline => eprintln!(
            "requests still in flight after --shutdown-timeout {grace:?}; exiting without them"
        ),
    }
    eprintln!("stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM where there are signals; the name of the one that came.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupted"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

/// The route a path counts under in the metrics (unknown paths share one label).
fn route_label(path: &str) -> &'static str {
    match path {
        ANSWER_ROUTE => ANSWER_ROUTE,
        "/" => "/",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// Counts every response by route and status.
async fn observe<B: Backend>(
    State(state): State<Arc<AppState<B>>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state
        .shared
        .metrics
        .request(route, status, started.elapsed());
    response
}

/// Admission: a permit per answer request, held until it is answered; 429 at once without one.
async fn admit<B: Backend>(
    State(state): State<Arc<AppState<B>>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        return ApiError::overloaded(format!(
            "the server is answering {} requests, its limit; retry shortly",
            state.in_flight()
        ))
        .into_response();
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health<B: Backend>(State(state): State<Arc<AppState<B>>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "model": state.model}))
}

async fn ready<B: Backend>(State(state): State<Arc<AppState<B>>>) -> Response {
    if state.shared.worker_running.load(Ordering::Acquire) {
        Json(serde_json::json!({"status": "ready", "model": state.model})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the inference worker has stopped".into(),
        )
        .into_response()
    }
}

async fn metrics<B: Backend>(State(state): State<Arc<AppState<B>>>) -> Response {
    let queued = state.shared.backlog.queued();
    let gauges = Gauges {
        queued_windows: queued.windows,
        queued_tokens: queued.tokens,
        tokens_per_second: state.shared.backlog.tokens_per_second().unwrap_or(0.0),
        requests_in_flight: state.in_flight(),
    };
    let text = state.shared.metrics.render(&gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

impl<B: Backend> AppState<B> {
    /// Answer requests admitted and not yet answered.
    fn in_flight(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerRequest {
    context: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    questions: Vec<String>,
    #[serde(default)]
    n_best: Option<usize>,
}

#[derive(Serialize)]
struct AnswerResponse {
    answers: Vec<Answer>,
}

/// Where an answered request's time went, sent back as `x-*-time` headers (milliseconds).
struct Timings {
    tokenization: Duration,
    queue: Duration,
    inference: Duration,
    total: Duration,
}

async fn answer<B: Backend>(
    State(state): State<Arc<AppState<B>>>,
    body: Result<Json<AnswerRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Json(request) = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let ask = state.limits.check(request)?;
    let answerer = state.answerer.clone();
    // Tokenizing and cutting the windows out stay off the async threads.
    let (prepared, windows) = blocking(move || {
        let prepared = answerer.prepare(&ask.context, &ask.questions, ask.n_best)?;
        let windows = prepared.windows();
        Ok((prepared, windows))
    })
    .await?
    .map_err(ApiError::from_model)?;
    let tokenization = started.elapsed();
    let deadline = tokio::time::Instant::from_std(started + state.limits.request_timeout);
    let done = state.infer(windows, deadline).await?;
    let answerer = state.answerer.clone();
    let (queue, inference) = (done.queue, done.inference);
    let answers =
        blocking(move || answerer.finish(&prepared, &FeatureOutputs::from_windows(done.logits)))
            .await?;
    let timings = Timings {
        tokenization,
        queue,
        inference,
        total: started.elapsed(),
    };
    Ok(with_timings(
        Json(AnswerResponse { answers }).into_response(),
        &timings,
    ))
}

impl<B: Backend> AppState<B> {
    /// Queues a request's windows for the model and waits for their logits until `deadline`; on
    /// the way out (timeout, or the client gone) its queued windows are dropped.
    async fn infer(
        &self,
        windows: Vec<Window>,
        deadline: tokio::time::Instant,
    ) -> Result<Done, ApiError> {
        let work = Work {
            windows: windows.len(),
            tokens: windows.iter().map(Window::len).sum(),
        };
        let max = self.limits.max_queued_windows;
        if windows.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request needs {} windows and the server queues at most {max}; send \
                     fewer questions or a shorter context",
                    windows.len()
                ),
            ));
        }
        // What is left of the request's time after tokenizing it.
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(refusal) = self.shared.backlog.admit(work, max, limit) {
            return Err(ApiError::overloaded(refusal.to_string()));
        }
        let (reply, replied) = oneshot::channel();
        let submission = Submission {
            windows,
            reply,
            submitted: Instant::now(),
        };
        if self.submit.send(submission).is_err() {
            self.shared.backlog.remove(work);
            return Err(stopped_worker());
        }
        match tokio::time::timeout_at(deadline, replied).await {
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not answered within --request-timeout {:?}; the server is busy",
                    self.limits.request_timeout
                ),
            )),
            Ok(Err(_)) => Err(stopped_worker()),
            Ok(Ok(Err(panic))) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model failed: {panic}"),
            )),
            Ok(Ok(Ok(done))) => Ok(done),
        }
    }
}

fn stopped_worker() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the inference worker has stopped".into(),
    )
}

/// Runs `f` on a blocking thread (tokenizing and decoding stay off the async threads and the
/// model's thread).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn with_timings(mut response: Response, t: &Timings) -> Response {
    let headers = response.headers_mut();
    for (name, d) in [
        ("x-tokenization-time", t.tokenization),
        ("x-queue-time", t.queue),
        ("x-inference-time", t.inference),
        ("x-total-time", t.total),
    ] {
        let ms = format!("{:.1}", d.as_secs_f64() * 1000.0);
        headers.insert(name, HeaderValue::from_str(&ms).expect("a number"));
    }
    response
}

struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message }
    }

    fn unprocessable(message: String) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    fn overloaded(message: String) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// The library's own checks of a request (empty context or question, none asked) are the
    /// client's to fix; anything else is ours.
    fn from_model(e: ModelError) -> Self {
        match e {
            ModelError::Input(message) => Self::unprocessable(message),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
