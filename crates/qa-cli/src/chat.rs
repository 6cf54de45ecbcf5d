//! `qa chat`: an interactive session. Paste or load a context, ask questions, see the answer,
//! its confidence and the sentence it came from with the answer highlighted. Reads standard
//! input line by line, so it can be driven by a pipe as well as by a person.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use burn::tensor::backend::Backend;
use qa_model::{OnBackend, QuestionAnswerer};

use crate::cli::ChatArgs;
use crate::predict::{load_answerer, read_context};

const HELP: &str = "Type a question, or a command:
  /context        paste a new context, ended by an empty line
  /load FILE      read the context from FILE
  /nbest N        show N candidate answers
  /show           print the current context
  /help           this text
  /quit           leave (end of input does too)";

pub fn run(args: &ChatArgs) -> anyhow::Result<()> {
    let context = args.context_file.as_deref().map(read_context).transpose()?;
    struct Job<'a> {
        args: &'a ChatArgs,
        context: Option<String>,
    }
    impl OnBackend for Job<'_> {
        type Output = ();
        fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
            let answerer = load_answerer::<B>(&self.args.model, device)?;
            Session {
                answerer,
                shown: self.args.model.n_best,
                context: self.context,
                color: std::io::stdout().is_terminal(),
                interactive: std::io::stdin().is_terminal(),
            }
            .run()
        }
    }
    qa_model::run_on(args.model.device, Job { args, context }, &|l| {
        eprintln!("{l}")
    })
}

struct Session<B: Backend> {
    answerer: QuestionAnswerer<B>,
    /// Candidates shown per answer.
    shown: usize,
    context: Option<String>,
    color: bool,
    interactive: bool,
}

impl<B: Backend> Session<B> {
    fn run(mut self) -> anyhow::Result<()> {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        println!("{HELP}");
        if self.context.is_none() {
            println!("Paste a context, then an empty line:");
            self.context = read_block(&mut lines)?;
        }
        loop {
            if self.interactive {
                print!("question> ");
                std::io::stdout().flush()?;
            }
            let Some(line) = lines.next().transpose()? else {
                break;
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (command, rest) = line
                .split_once(' ')
                .map_or((line, ""), |(c, r)| (c, r.trim()));
            match command {
                "/quit" | "/exit" => break,
                "/help" => println!("{HELP}"),
                "/show" => println!("{}", self.context.as_deref().unwrap_or("(no context yet)")),
                "/context" => {
                    println!("Paste the new context, then an empty line:");
                    if let Some(c) = read_block(&mut lines)? {
                        self.context = Some(c);
                        println!(
                            "context set ({} characters)",
                            self.context.as_ref().map_or(0, |c| c.chars().count())
                        );
                    }
                }
                "/load" => match read_context(std::path::Path::new(rest)) {
                    Ok(c) => {
                        println!(
                            "context loaded from {rest} ({} characters)",
                            c.chars().count()
                        );
                        self.context = Some(c);
                    }
                    Err(e) => println!("error: {e:#}"),
                },
                "/nbest" => match rest.parse::<usize>() {
                    Ok(n) if n > 0 => {
                        self.shown = n;
                        println!("showing {n} candidates");
                    }
                    _ => println!("error: /nbest needs a whole number of at least 1"),
                },
                c if c.starts_with('/') => println!("error: unknown command {c}; /help lists them"),
                _ => self.ask(line)?,
            }
        }
        Ok(())
    }

    fn ask(&self, question: &str) -> anyhow::Result<()> {
        let Some(context) = &self.context else {
            println!("error: no context yet; use /context or /load FILE");
            return Ok(());
        };
        let answers = self.answerer.answer(context, &[question], self.shown)?;
        let Some(v) = answers.first() else {
            bail!("no answer came back")
        };
        println!(
            "answer: {}  ({:.1} % confident)",
            v.answer,
            v.probability * 100.0
        );
        let chars: Vec<char> = v.sentence.chars().collect();
        let (a, b) = (
            v.start - v.sentence_start,
            (v.end - v.sentence_start).min(chars.len()),
        );
        let before: String = chars[..a.min(chars.len())].iter().collect();
        let inside: String = chars[a.min(chars.len())..b.max(a).min(chars.len())]
            .iter()
            .collect();
        let after: String = chars[b.min(chars.len())..].iter().collect();
        if self.color {
            println!("  from: {before}\x1b[1;33m{inside}\x1b[0m{after}");
        } else {
            println!("  from: {before}**{inside}**{after}");
        }
        for c in v.candidates.iter().skip(1) {
            println!("  also: {}  ({:.1} %)", c.text, c.probability * 100.0);
        }
        Ok(())
    }
}

/// Lines up to an empty line (or the end of input), joined; `None` if nothing was given.
fn read_block(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> anyhow::Result<Option<String>> {
    let mut block = Vec::new();
    for line in lines {
        let line = line?;
        if line.trim().is_empty() {
            if block.is_empty() {
                continue;
            }
            break;
        }
        block.push(line);
    }
    Ok((!block.is_empty()).then(|| block.join("\n")))
}
