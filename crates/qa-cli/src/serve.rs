//! `qa serve`: a JSON API (`POST /v1/answer`, `GET /health`) and a chat page at `/`.
//!
//! Requests larger than the body limit get 413, malformed JSON 400/422, contexts or question
//! lists over the configured limits 413/422, questions the model cannot answer as asked (empty
//! ones, none at all) 422, each with a JSON `{"error": ...}` body. Inference runs on blocking
//! threads, so requests are served concurrently.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::backend::Backend;
use qa_model::{Answer, ModelError, OnBackend, QuestionAnswerer};
use serde::{Deserialize, Serialize};

use crate::cli::ServeArgs;
use crate::predict::load_answerer;

const PAGE: &str = include_str!("page.html");

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    struct Job<'a> {
        args: &'a ServeArgs,
    }
    impl OnBackend for Job<'_> {
        type Output = ();
        fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
            let answerer = load_answerer::<B>(&self.args.model, device)?;
            let state = Arc::new(AppState {
                answerer,
                shown: self.args.model.n_best,
                model: self.args.model.model.display().to_string(),
                max_context_chars: self.args.max_context_chars,
                max_questions: self.args.max_questions,
                max_n_best: 20,
            });
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(state, &self.args.addr))
        }
    }
    qa_model::run_on(args.model.device, Job { args }, &|l| eprintln!("{l}"))
}

struct AppState<B: Backend> {
    answerer: QuestionAnswerer<B>,
    /// Candidates shown when a request does not say.
    shown: usize,
    model: String,
    max_context_chars: usize,
    max_questions: usize,
    max_n_best: usize,
}

async fn serve<B: Backend>(state: Arc<AppState<B>>, addr: &str) -> anyhow::Result<()> {
    // Room for the longest accepted context in UTF-8 plus questions and JSON syntax.
    let body_limit = state.max_context_chars * 4 + 64 * 1024;
    let app = Router::new()
        .route("/", get(page))
        .route("/health", get(health::<B>))
        .route("/v1/answer", post(answer::<B>))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health<B: Backend>(State(state): State<Arc<AppState<B>>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "model": state.model}))
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

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

async fn answer<B: Backend>(
    State(state): State<Arc<AppState<B>>>,
    body: Result<Json<AnswerRequest>, JsonRejection>,
) -> Result<Json<AnswerResponse>, ApiError> {
    let Json(request) = body.map_err(|r| ApiError(r.status(), r.body_text()))?;
    let mut questions = request.questions;
    questions.extend(request.question);
    if questions.len() > state.max_questions {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} questions; at most {} per request",
                questions.len(),
                state.max_questions
            ),
        ));
    }
    let chars = request.context.chars().count();
    if chars > state.max_context_chars {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "context has {chars} characters; at most {} are accepted",
                state.max_context_chars
            ),
        ));
    }
    let n_best = request.n_best.unwrap_or(state.shown);
    if n_best == 0 || n_best > state.max_n_best {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("n_best must be between 1 and {}", state.max_n_best),
        ));
    }
    let context = request.context;
    let answers =
        tokio::task::spawn_blocking(move || state.answerer.answer(&context, &questions, n_best))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| match e {
                // The library's own checks of a request (empty context or question, none asked).
                ModelError::Input(message) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, message),
                other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
            })?;
    Ok(Json(AnswerResponse { answers }))
}
