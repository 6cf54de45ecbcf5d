"""The Python answerer `cargo xtask bench` serves beside `qa serve`: what a Python user deploys now
that transformers 5 has no question-answering pipeline. transformers + PyTorch behind the
standard library's threading HTTP server, the same API as `qa serve` (POST /v1/answer with
{"context", "question"}), windows 384/128 in one forward pass per request, and the best valid
span (start <= end, at most 30 tokens, both in the context) among the 20 best starts and ends.

    python3 tests/parity/python_answerer.py MODEL_DIR [PORT]

Prints `listening on http://127.0.0.1:PORT` once the model is loaded. Threads: QA_TORCH_THREADS
(default 2, this project's machines).
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

MAX_LEN, STRIDE, N_BEST, MAX_ANSWER = 384, 128, 20, 30


class Answerer:
    def __init__(self, model_dir):
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()

    def answer(self, context, question):
        enc = self.tok(question.lstrip(), context, truncation="only_second", max_length=MAX_LEN,
                       stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True,
                       padding="longest", return_tensors="pt")
        offsets = enc.pop("offset_mapping").tolist()
        enc.pop("overflow_to_sample_mapping")
        with torch.inference_mode():
            out = self.model(**enc)
        best = (float("-inf"), 0, 0)
        for i, window in enumerate(offsets):
            in_context = [s == 1 for s in enc.sequence_ids(i)]
            starts = out.start_logits[i].topk(N_BEST).indices.tolist()
            ends = out.end_logits[i].topk(N_BEST).indices.tolist()
            for s in starts:
                for e in ends:
                    if not (in_context[s] and in_context[e]) or e < s or e - s + 1 > MAX_ANSWER:
                        continue
                    score = float(out.start_logits[i][s] + out.end_logits[i][e])
                    if score > best[0]:
                        best = (score, window[s][0], window[e][1])
        score, start, end = best
        return {"answer": context[start:end], "score": score, "start": start, "end": end}


def handler(answerer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            try:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, body = 200, {"answers": [answerer.answer(request["context"],
                                                                 request["question"])]}
            except Exception as e:  # a bench client, not the internet: report and go on
                status, body = 400, {"error": str(e)}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def main():
    torch.set_num_threads(int(os.environ.get("QA_TORCH_THREADS", "2")))
    model_dir = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ThreadingHTTPServer.request_queue_size = 128  # the default 5 resets concurrent clients
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(Answerer(model_dir)))
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
