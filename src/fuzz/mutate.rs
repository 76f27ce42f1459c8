//! Owns the fuzzer's mutations: byte flips, inserts and deletes, splicing, line edits, and a
//! dictionary of tokens that break parsers. Pure and seeded: the same seed and corpus give the
//! same inputs, so any input the fuzzer reports can be produced again.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Inputs are cut to this length: longer ones only make every execution slower.
pub(crate) const MAX_LEN: usize = 32 << 10;
/// The dictionary stops growing here, so harvesting error messages cannot crowd out the tokens
/// that matter.
const MAX_DICT: usize = 4096;

/// Values that have broken parsers and unit arithmetic before: the extremes of the integer types,
/// signs and percentages out of range, empty and huge strings, non-ASCII where a key is read,
/// table headers and quotes that change what the following bytes mean.
const TOKENS: &[&str] = &[
    "18446744073709551615s",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "65535",
    "65536",
    "-1",
    "0",
    "-0",
    "0.0",
    "1e309",
    "-1e309",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e-320",
    "500%",
    "-100%",
    "100%",
    "0%",
    "101%",
    "0.5%",
    "1e308%",
    "\"\"",
    "\"18446744073709551615s\"",
    "\"500%\"",
    "\"-100%\"",
    "\"-1s\"",
    "\"0s\"",
    "\"0ms\"",
    "\"1ns\"",
    "\"999999999999999h\"",
    "\"1 GiB\"",
    "\"16EiB\"",
    "\"0B\"",
    "\"0.0.0.0:0\"",
    "\"[::1]:65536\"",
    "\"10.0.0.0/33\"",
    "\"::/129\"",
    "\"https://\"",
    "é",
    "é =",
    "\"é\" = 1",
    "ü",
    "\u{1F600}",
    "\u{202E}",
    "[[fault]]",
    "[[steady_state.probe]]",
    "[[setup]]",
    "[[agent]]",
    "[[proxy]]",
    "[steady_state]",
    "[recovery]",
    "[slo_budget]",
    "[targets.web]",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "{}",
    "[]",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "\\",
    "\\u0000",
    "\\ud800",
    "=",
    " = ",
    ":",
    ",",
    "\n",
    "\r\n",
    "\t",
    "\0",
    "#",
    "true",
    "false",
    "null",
];

/// Bytes that change how TOML and JSON read what follows.
const SPECIAL: &[u8] = b"\"'[]{}=:,.#\\\n -_0123456789";

/// Numbers put in place of the numbers of an input.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "0.000001",
];

pub(crate) struct Mutator {
    rng: StdRng,
    dict: Vec<Vec<u8>>,
    known: HashSet<Vec<u8>>,
}

impl Mutator {
    pub(crate) fn new(seed: u64) -> Mutator {
        let mut m = Mutator {
            rng: StdRng::seed_from_u64(seed),
            dict: Vec::new(),
            known: HashSet::new(),
        };
        for t in TOKENS {
            m.add_token(t.as_bytes());
        }
        // A huge string: what a parser that copies or formats values does with 20 KiB of one.
        m.add_token(format!("\"{}\"", "a".repeat(20_000)).as_bytes());
        m
    }

    pub(crate) fn dictionary_len(&self) -> usize {
        self.dict.len()
    }

    /// Adds a token (a key of the format, a value seen in an error message) to the dictionary.
    pub(crate) fn add_token(&mut self, token: &[u8]) {
        if token.is_empty() || self.dict.len() >= MAX_DICT || self.known.contains(token) {
            return;
        }
        self.known.insert(token.to_vec());
        self.dict.push(token.to_vec());
    }

    /// Adds the keys of a TOML or JSON input: every word before a `=` and every quoted string
    /// before a `:`, so the dictionary knows the format's keys without a list to keep up to date.
    pub(crate) fn learn_keys(&mut self, input: &[u8]) {
        let text = String::from_utf8_lossy(input);
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.trim_start();
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim().trim_matches('"');
                if !key.is_empty() && !key.starts_with('#') && key.len() <= 40 {
                    keys.push(key.to_owned());
                }
            }
            for part in line.split("\":").take(8) {
                if let Some(start) = part.rfind('"') {
                    let key = &part[start + 1..];
                    if !key.is_empty() && key.len() <= 40 && !key.contains(' ') {
                        keys.push(key.to_owned());
                    }
                }
            }
        }
        for key in keys {
            self.add_token(key.as_bytes());
            self.add_token(format!("\"{key}\"").as_bytes());
        }
    }

    /// Adds what an error message quotes in backticks: serde lists every field a table accepts
    /// (`expected one of `a`, `b``) and every variant an enum has.
    pub(crate) fn learn_from_message(&mut self, message: &str) {
        let mut parts = message.split('`');
        parts.next();
        while let Some(quoted) = parts.next() {
            if !quoted.is_empty() && quoted.len() <= 40 && !quoted.contains('\n') {
                self.add_token(quoted.as_bytes());
            }
            parts.next();
        }
    }

    /// A new input: one from the corpus with one to five mutations stacked on it.
    pub(crate) fn mutate(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut input = corpus[self.rng.random_range(0..corpus.len())].clone();
        let stacked = 1 + self.rng.random_range(0..5);
        for _ in 0..stacked {
            self.once(&mut input, corpus);
        }
        input.truncate(MAX_LEN);
        input
    }

    fn once(&mut self, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let len = input.len();
        match self.rng.random_range(0..13) {
            // Flip one bit; mostly the low seven, so ASCII stays ASCII and the input stays text.
            0 if len > 0 => {
                let at = self.rng.random_range(0..len);
                let bit = if self.rng.random_bool(0.9) {
                    self.rng.random_range(0..7)
                } else {
                    7
                };
                input[at] ^= 1 << bit;
            }
            1 if len > 0 => {
                let at = self.rng.random_range(0..len);
                input[at] = self.special_byte();
            }
            2 => {
                let at = self.rng.random_range(0..=len);
                let n = 1 + self.rng.random_range(0..4);
                let bytes: Vec<u8> = (0..n).map(|_| self.special_byte()).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = self.rng.random_range(0..len);
                let max = if self.rng.random_bool(0.1) { len } else { 16 };
                let n = 1 + self.rng.random_range(0..max.min(len - at));
                input.drain(at..at + n);
            }
            // Copy a piece of the input elsewhere in it.
            4 if len > 0 => {
                let from = self.rng.random_range(0..len);
                let n = 1 + self.rng.random_range(0..64.min(len - from));
                let piece = input[from..from + n].to_vec();
                let at = self.rng.random_range(0..=len);
                input.splice(at..at, piece);
            }
            // Splice: the head of this input and the tail of another.
            5 => {
                let other = &corpus[self.rng.random_range(0..corpus.len())];
                let cut = self.rng.random_range(0..=len);
                let from = self.rng.random_range(0..=other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 => self.duplicate_line(input),
            7 => self.delete_line(input),
            8 | 9 => {
                let token = self.token();
                let at = self.rng.random_range(0..=len);
                input.splice(at..at, token);
            }
            10 | 11 => self.replace_value(input),
            12 => self.replace_number(input),
            _ => {}
        }
    }

    fn special_byte(&mut self) -> u8 {
        if self.rng.random_bool(0.7) {
            SPECIAL[self.rng.random_range(0..SPECIAL.len())]
        } else {
            self.rng.random()
        }
    }

    fn token(&mut self) -> Vec<u8> {
        self.dict[self.rng.random_range(0..self.dict.len())].clone()
    }

    /// Start and end (past the newline) of every line.
    fn lines(input: &[u8]) -> Vec<(usize, usize)> {
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in input.iter().enumerate() {
            if *b == b'\n' {
                lines.push((start, i + 1));
                start = i + 1;
            }
        }
        if start < input.len() {
            lines.push((start, input.len()));
        }
        lines
    }

    fn duplicate_line(&mut self, input: &mut Vec<u8>) {
        let lines = Self::lines(input);
        if lines.is_empty() {
            return;
        }
        let (s, e) = lines[self.rng.random_range(0..lines.len())];
        let mut line = input[s..e].to_vec();
        if line.last() != Some(&b'\n') {
            line.insert(0, b'\n');
        }
        let (at, _) = lines[self.rng.random_range(0..lines.len())];
        input.splice(at..at, line);
    }

    fn delete_line(&mut self, input: &mut Vec<u8>) {
        let lines = Self::lines(input);
        if lines.is_empty() {
            return;
        }
        let (s, e) = lines[self.rng.random_range(0..lines.len())];
        input.drain(s..e);
    }

    /// Replaces what follows a `=` or `:` on one line (up to a `,`, `}` or the line's end) with a
    /// dictionary token: the mutation that gets past the syntax and into the validation.
    fn replace_value(&mut self, input: &mut Vec<u8>) {
        let seps: Vec<usize> = input
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'=' || **b == b':')
            .map(|(i, _)| i)
            .collect();
        if seps.is_empty() {
            let token = self.token();
            input.extend(token);
            return;
        }
        let start = seps[self.rng.random_range(0..seps.len())] + 1;
        let end = input[start..]
            .iter()
            .position(|b| matches!(b, b'\n' | b',' | b'}'))
            .map_or(input.len(), |n| start + n);
        let mut token = self.token();
        token.insert(0, b' ');
        input.splice(start..end, token);
    }

    fn replace_number(&mut self, input: &mut Vec<u8>) {
        let starts: Vec<usize> = (0..input.len())
            .filter(|&i| input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_digit()))
            .collect();
        if starts.is_empty() {
            return;
        }
        let start = starts[self.rng.random_range(0..starts.len())];
        let end = input[start..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(input.len(), |n| start + n);
        let number = NUMBERS[self.rng.random_range(0..NUMBERS.len())];
        input.splice(start..end, number.bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::Mutator;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let corpus = vec![
            b"title = \"x\"\n[[fault]]\nkind = \"process-kill\"\n".to_vec(),
            b"{\"ids\": [\"a\"]}".to_vec(),
        ];
        let run = |seed| {
            let mut m = Mutator::new(seed);
            (0..500).map(|_| m.mutate(&corpus)).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn keys_are_learned_from_inputs_and_error_messages() {
        let mut m = Mutator::new(0);
        let before = m.dictionary_len();
        m.learn_keys(b"max_duration = \"15m\"\n{\"lease_ms\": 5}");
        m.learn_from_message("unknown field `typo`, expected one of `name`, `listen`");
        let dict: Vec<String> = m
            .dict
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        for key in ["max_duration", "lease_ms", "name", "listen"] {
            assert!(dict.iter().any(|t| t == key), "{key} not learned");
        }
        assert!(m.dictionary_len() > before);
    }
}
