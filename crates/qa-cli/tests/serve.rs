//! `qa serve` over loopback: answers, limits, load, backpressure, timeouts, metrics and
//! shutdown, with a tiny random model so it runs anywhere; each test bounds its own count and
//! time.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;
use common::{CONTEXT, qa, run, stderr, stdout, tiny_model};

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// What the server wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the server process, in MiB (Linux).
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.base))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// The value of one sample line of /metrics (0 when absent, as Prometheus reads it).
    fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn start_server(model: &Path, extra: &[&str]) -> Server {
    let log = model.with_file_name(format!("serve-{}.log", std::process::id()));
    let log = unique(log);
    let mut child = qa()
        .args([
            "serve",
            "--device",
            "cpu",
            "--addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(model)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    Server { child, base, log }
}

/// `path`, or `path` with a counter when it exists (several servers in one test).
fn unique(path: PathBuf) -> PathBuf {
    (0..)
        .map(|i| path.with_extension(format!("{i}.log")))
        .find(|p| !p.exists())
        .unwrap()
}

/// A response: status, the headers the tests look at, and the body as JSON (or as a string).
struct Reply {
    status: u16,
    retry_after: Option<String>,
    total_time: Option<String>,
    body: serde_json::Value,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn ask(base: &str, body: &str) -> Reply {
    let mut response = agent()
        .post(&format!("{base}/v1/answer"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (retry_after, total_time) = (header("retry-after"), header("x-total-time"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        retry_after,
        total_time,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    }
}

fn post(base: &str, body: &str) -> (u16, serde_json::Value) {
    let reply = ask(base, body);
    (reply.status, reply.body)
}

#[test]
fn server_answers_over_loopback_with_limits() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let server = start_server(
        &model,
        &["--max-context-chars", "200", "--max-questions", "4"],
    );
    let base = server.base.clone();

    let health: serde_json::Value = ureq::get(&format!("{base}/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let page = ureq::get(&format!("{base}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("/v1/answer"));

    let body = serde_json::json!({"context": CONTEXT, "questions": ["When was the tower built?", "What is Paris?"], "n_best": 2});
    let (status, v) = post(&base, &body.to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["answers"].as_array().unwrap().len(), 2);

    // Concurrent requests are all answered.
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let body = serde_json::json!({"context": CONTEXT, "question": format!("What is Paris? {i}")});
                post(&base, &body.to_string()).0
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }

    let cases = [
        (serde_json::json!({"context": CONTEXT}).to_string(), 422),
        (
            serde_json::json!({"context": CONTEXT, "question": "  "}).to_string(),
            422,
        ),
        (
            serde_json::json!({"context": "x".repeat(201), "question": "q"}).to_string(),
            413,
        ),
        (
            serde_json::json!({"context": CONTEXT, "questions": ["a", "b", "c", "d", "e"]})
                .to_string(),
            422,
        ),
        (
            serde_json::json!({"context": CONTEXT, "question": "q", "n_best": 0}).to_string(),
            422,
        ),
        (
            serde_json::json!({"context": CONTEXT, "question": "q", "colour": 1}).to_string(),
            422,
        ),
        ("{not json".to_string(), 400),
        (
            format!(
                "{{\"context\": \"{}\", \"question\": \"q\"}}",
                "y".repeat(200 * 4 + 70 * 1024)
            ),
            413,
        ),
    ];
    for (body, want) in cases {
        let (status, v) = post(&base, &body);
        assert_eq!(status, want, "{}: {v}", &body[..body.len().min(80)]);
        if status != 413 || v.get("error").is_some() {
            assert!(v.get("error").is_some() || v.is_string(), "{v}");
        }
    }

    // Abuse of other kinds: all 4xx, and the server goes on.
    let deep = "[".repeat(10_000);
    let abuse = [
        ("POST", "/v1/answer", "text/plain", CONTEXT.to_string(), 415),
        ("GET", "/v1/answer", "application/json", String::new(), 405),
        ("POST", "/v1/frob", "application/json", "{}".into(), 404),
        ("POST", "/v1/answer", "application/json", deep, 422),
        (
            "POST",
            "/v1/answer",
            "application/json",
            "[1, 2]".into(),
            422,
        ),
        (
            "POST",
            "/v1/answer",
            "application/json",
            "{\"context\": 7}".into(),
            422,
        ),
    ];
    for (method, path, content_type, body, want) in abuse {
        let url = format!("{base}{path}");
        let mut response = match method {
            "GET" => agent().get(&url).call(),
            _ => agent()
                .post(&url)
                .header("content-type", content_type)
                .send(&body),
        }
        .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(
            status,
            want,
            "{method} {path} {}: {text}",
            &body[..body.len().min(40)]
        );
    }
    let body = serde_json::json!({"context": CONTEXT, "question": "What is Paris?"});
    assert_eq!(post(&base, &body.to_string()).0, 200);
    assert_eq!(
        server.metric("qa_requests_total{route=\"other\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        server.metric("qa_requests_total{route=\"/v1/answer\",status=\"415\"}"),
        1.0
    );
    let metrics = server.metrics();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
}

/// The chat page in a real browser: headless Chromium loads it with a context and a question in
/// the URL, the page asks the server, and the answer appears in the DOM. `.ci/run` installs
/// Debian's chromium and skips `with_chromium::` (saying so) when it cannot.
mod with_chromium {
    use super::*;

    #[test]
    #[ignore = "needs Chromium (/usr/bin/chromium or QA_CHROMIUM)"]
    fn chat_page_works_in_headless_chromium() {
        let chromium = std::env::var_os("QA_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            chromium.is_file(),
            "no Chromium at {} (set QA_CHROMIUM)",
            chromium.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let server = start_server(&model, &[]);
        let url = format!(
            "{}/?context={}&question={}",
            server.base,
            CONTEXT.replace(' ', "%20"),
            "When%20was%20the%20tower%20built%3F"
        );
        let profile = dir.path().join("profile");
        let out = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(dom.contains("Q: When was the tower built?"), "{dom}");
        assert!(dom.contains("class=\"answer\">A: "), "{dom}");
        assert!(dom.contains("% confident"), "{dom}");
        assert!(dom.contains("<mark>"), "{dom}");
    }
}

/// `qa predict --json` for `questions` about `context`: the answers a request alone gets.
fn predicted(model: &Path, context: &str, questions: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = qa();
    cmd.args([
        "predict",
        "--json",
        "--device",
        "cpu",
        "--n-best",
        "3",
        "--context",
        context,
    ]);
    for q in questions {
        cmd.args(["--question", q]);
    }
    let out = run(cmd.arg("--model").arg(model));
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Same span and candidates, scores within 1e-5: batching must not change an answer.
fn assert_same_answer(got: &serde_json::Value, want: &serde_json::Value) {
    for key in ["question", "answer", "start", "end", "sentence"] {
        assert_eq!(got[key], want[key], "{key}: {got} vs {want}");
    }
    let score = |v: &serde_json::Value| v["score"].as_f64().unwrap();
    assert!((score(got) - score(want)).abs() < 1e-5, "{got} vs {want}");
    let texts = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].clone())
            .collect()
    };
    assert_eq!(texts(got), texts(want));
}

/// Runs `f(thread)` on `threads` threads released together; their results in thread order.
fn together<T: Send + 'static>(
    threads: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(threads));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, f) = (barrier.clone(), f.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(t)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

const QUESTIONS: [&str; 6] = [
    "When was the tower built?",
    "What is Paris?",
    "What was built in 1889?",
    "Paris is a city of what?",
    "What is the tower?",
    "When?",
];

#[test]
fn concurrent_requests_are_batched_and_answered_as_qa_predict_answers() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let reference = predicted(&model, CONTEXT, &QUESTIONS);
    let server = start_server(
        &model,
        &["--max-batch-windows", "8", "--max-batch-delay", "5ms"],
    );
    let base = server.base.clone();
    let replies = together(16, move |t| {
        (0..6)
            .map(|k| {
                let q = (t + k) % QUESTIONS.len();
                let body =
                    serde_json::json!({"context": CONTEXT, "question": QUESTIONS[q], "n_best": 3});
                (q, ask(&base, &body.to_string()))
            })
            .collect::<Vec<_>>()
    });
    for (q, reply) in replies.into_iter().flatten() {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.total_time.is_some(), "x-total-time is sent");
        assert_same_answer(&reply.body["answers"][0], &reference[q]);
    }
    // Some forward passes carried windows of several requests.
    let windows = server.metric("qa_windows_total");
    let passes = server.metric("qa_batch_windows_count");
    assert_eq!(windows, 96.0);
    assert!(
        passes < windows,
        "{passes} forward passes for {windows} windows"
    );
    assert_eq!(
        server.metric("qa_requests_total{route=\"/v1/answer\",status=\"200\"}"),
        96.0
    );
}

#[test]
fn a_flood_of_long_requests_gets_429_not_5xx_with_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let server = start_server(&model, &["--max-concurrent-requests", "4"]);
    let sentence = "Paris is a city of France. The tower was built in 1889. ";
    let context = sentence.repeat(24_000 / sentence.len());
    let base = server.base.clone();
    let started = Instant::now();
    let replies = together(48, move |t| {
        let body = serde_json::json!({"context": context, "question": QUESTIONS[t % 6]});
        let sent = Instant::now();
        let reply = ask(&base, &body.to_string());
        (reply, sent.elapsed())
    });
    let took = started.elapsed();
    let answered: Vec<_> = replies.iter().filter(|(r, _)| r.status == 200).collect();
    let refused: Vec<_> = replies.iter().filter(|(r, _)| r.status == 429).collect();
    for (r, _) in &replies {
        assert!(matches!(r.status, 200 | 429), "{}: {}", r.status, r.body);
    }
    for (r, _) in &refused {
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert!(
            r.body["error"].as_str().unwrap().contains("limit"),
            "{}",
            r.body
        );
    }
    assert!(
        !answered.is_empty() && !refused.is_empty(),
        "{} answered",
        answered.len()
    );
    let slowest = answered.iter().map(|(_, d)| *d).max().unwrap();
    let peak = server.peak_rss_mib();
    let shown = peak.map_or("unknown".into(), |p| format!("{p:.0} MiB"));
    println!(
        "48 requests of {} characters at once, 4 admitted at a time: {} answered (slowest {slowest:?}), \
         {} refused with 429, all in {took:?}; server peak RSS {shown}",
        sentence.repeat(24_000 / sentence.len()).len(),
        answered.len(),
        refused.len()
    );
    if let Some(peak) = peak {
        assert!(peak < 1024.0, "peak RSS {peak} MiB");
    }
    let count = |status: u16| {
        server.metric(&format!(
            "qa_requests_total{{route=\"/v1/answer\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(count(200), answered.len() as f64);
    assert_eq!(count(429), refused.len() as f64);
    assert_eq!(server.metric("qa_queued_windows"), 0.0);
    assert_eq!(server.metric("qa_requests_in_flight"), 0.0);
    // And it still answers.
    let body = serde_json::json!({"context": CONTEXT, "question": "What is Paris?"});
    assert_eq!(ask(&server.base, &body.to_string()).status, 200);
}

/// Sends a request on a raw connection and closes it before the answer.
fn ask_and_leave(base: &str, body: &str, after: Duration) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/answer HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(after);
    drop(stream);
}

/// Polls `/metrics` until `sample` reaches `value` (or 10 s pass); its last value.
fn wait_for_metric(server: &Server, sample: &str, value: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let now = server.metric(sample);
        if now >= value || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn timed_out_and_abandoned_requests_leave_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // The model waits a second for a batch to fill, longer than a request may wait.
    let server = start_server(
        &model,
        &[
            "--max-batch-delay",
            "1s",
            "--max-batch-windows",
            "1000",
            "--request-timeout",
            "300ms",
        ],
    );
    let body = serde_json::json!({"context": CONTEXT, "question": "What is Paris?"}).to_string();
    let reply = ask(&server.base, &body);
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .contains("--request-timeout")
    );
    assert_eq!(
        wait_for_metric(&server, "qa_abandoned_requests_total", 1.0),
        1.0
    );
    // A client that hangs up: its queued windows are dropped too.
    ask_and_leave(&server.base, &body, Duration::from_millis(200));
    assert_eq!(
        wait_for_metric(&server, "qa_abandoned_requests_total", 2.0),
        2.0
    );
    assert_eq!(server.metric("qa_windows_total"), 0.0, "nothing ran");
    assert_eq!(server.metric("qa_queued_windows"), 0.0);
    let ready: serde_json::Value = ureq::get(&format!("{}/ready", server.base))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(ready["status"], "ready");
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_requests_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Requests wait half a second for a batch, so one is in flight when the signal comes.
    let mut server = start_server(
        &model,
        &["--max-batch-delay", "500ms", "--max-batch-windows", "1000"],
    );
    let base = server.base.clone();
    let in_flight = std::thread::spawn(move || {
        let body = serde_json::json!({"context": CONTEXT, "question": "What is Paris?"});
        ask(&base, &body.to_string())
    });
    std::thread::sleep(Duration::from_millis(150));
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let log = server.log();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    // Nothing listens any more.
    assert!(TcpStream::connect(server.base.strip_prefix("http://").unwrap()).is_err());
}
