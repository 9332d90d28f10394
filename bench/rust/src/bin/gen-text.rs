//! `gen-text`: makes the text benchmark's input, sentences from Debian's `fortunes` corpus.
//!
//! Every `%`-separated quotation of `$WEIR_DATA/text/*.txt` (or `/usr/share/games/fortunes/*`)
//! has its attribution lines (`-- Someone`) dropped and its whitespace collapsed, and is split
//! into sentences after `.`, `!` or `?` followed by a space. Sentences with fewer than two words
//! or no letters are skipped; the rest keep their natural length distribution. The sentences are
//! shuffled with a seeded PRNG (so every part of the file has the same mix of lengths) and the
//! first `--count` written, one per line, to `sentences.txt` and as `{"id": n, "text": "…"}` to
//! `sentences.jsonl`. If the corpus has fewer sentences, it is repeated (in a new order each
//! time). The output depends only on the corpus, `--count` and `--seed`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use weir_bench::prng::SplitMix64;

/// Generate benchmark sentences from the fortunes corpus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of sentences to write.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Folder of `%`-separated fortune files. Default `$WEIR_DATA/text`, else
    /// `/usr/share/games/fortunes`.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Output folder (`sentences.txt`, `sentences.jsonl`).
    #[arg(long, default_value = "data/generated/text")]
    out: PathBuf,
    /// PRNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn corpus_dir(arg: Option<PathBuf>) -> PathBuf {
    if let Some(p) = arg {
        return p;
    }
    if let Some(d) = std::env::var_os("WEIR_DATA") {
        let p = PathBuf::from(d).join("text");
        if p.is_dir() {
            return p;
        }
    }
    PathBuf::from("/usr/share/games/fortunes")
}

/// The fortune files of `dir`: `*.txt`, or files without an extension (Debian's layout).
fn corpus_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| match p.extension().and_then(|e| e.to_str()) {
            None => true,
            Some(e) => e == "txt",
        })
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("no fortune files in {}", dir.display());
    }
    Ok(v)
}

/// Splits one quotation into sentences (see the module docs).
fn sentences_of(quote: &str, out: &mut Vec<String>) {
    let body: Vec<&str> = quote
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("--") || t.starts_with("-- "))
        })
        .collect();
    let text: String = body
        .iter()
        .flat_map(|l| l.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(if c.is_control() { ' ' } else { c });
        if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|n| *n == ' ') {
            // closing quotes and brackets belong to the sentence they end
            push_sentence(&mut cur, out);
        }
    }
    push_sentence(&mut cur, out);
}

fn push_sentence(cur: &mut String, out: &mut Vec<String>) {
    let s = cur.trim();
    let words = s.split_whitespace().count();
    if words >= 2 && s.chars().any(char::is_alphabetic) {
        out.push(s.to_string());
    }
    cur.clear();
}

fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = corpus_dir(args.corpus);
    let mut all = Vec::new();
    for f in corpus_files(&dir)? {
        let raw = fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let text = String::from_utf8_lossy(&raw);
        for quote in text.split("\n%\n") {
            sentences_of(quote, &mut all);
        }
    }
    if all.is_empty() {
        bail!("no sentences found in {}", dir.display());
    }
    let mut rng = SplitMix64::new(args.seed);
    let mut chosen = Vec::with_capacity(args.count);
    while chosen.len() < args.count {
        let mut round = all.clone();
        shuffle(&mut round, &mut rng);
        let take = (args.count - chosen.len()).min(round.len());
        chosen.extend(round.into_iter().take(take));
    }
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let txt = args.out.join("sentences.txt");
    let jsonl = args.out.join("sentences.jsonl");
    let mut t = BufWriter::new(fs::File::create(&txt)?);
    let mut j = BufWriter::new(fs::File::create(&jsonl)?);
    for (i, s) in chosen.iter().enumerate() {
        writeln!(t, "{s}")?;
        writeln!(j, "{{\"id\": {i}, \"text\": {}}}", json_string(s))?;
    }
    t.flush()?;
    j.flush()?;
    let mut lens: Vec<usize> = chosen
        .iter()
        .map(|s| s.split_whitespace().count())
        .collect();
    lens.sort_unstable();
    eprintln!(
        "gen-text: {} sentences ({} distinct in {}) to {} and {}; words per sentence: median {}, p90 {}, max {}",
        chosen.len(),
        all.len(),
        dir.display(),
        txt.display(),
        jsonl.display(),
        lens[lens.len() / 2],
        lens[lens.len() * 9 / 10],
        lens[lens.len() - 1]
    );
    Ok(())
}
