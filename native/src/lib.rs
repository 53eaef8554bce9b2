//! Native core of trustlog's sensitive-data detector.
//!
//! `services/redactor/detect.py` is the specification: this module receives that file's
//! compiled `re` patterns (their source text) and constants when the Python module loads, runs
//! them with PCRE2's JIT, and ports only the few checks Python does per candidate (Luhn,
//! mod-97, card schemes, context windows). A differential test runs both over the labelled
//! corpus, Faker data and generated text and requires identical counts.
//!
//! Python `re` and PCRE2 share backtracking semantics for everything these patterns use
//! (look-behinds, back-references, inline case-insensitive groups). What differs is Unicode:
//! the patterns run here on UTF-8 bytes with ASCII classes, which is what `re.ASCII` means.
//! The few places where detect.py asks a Unicode question (a non-ASCII letter right before an
//! "@", `str.isdigit` on a non-ASCII character, `str.lower` of a table header) are not guessed:
//! `scan` returns `None` and the caller runs the Python detector on that text.
//!
//! Only class labels and counts leave this module, never text or offsets.

use std::collections::{HashMap, HashSet};

use aho_corasick::{AhoCorasick, Input as AcInput, MatchKind as AcMatchKind};
use pcre2::bytes::{CaptureLocations, Regex, RegexBuilder};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use regex_automata::dfa::{dense, Automaton};
use regex_automata::nfa::thompson;
use regex_automata::util::primitives::StateID;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};

/// The text needs a Unicode-aware decision (or PCRE2 reported an error, such as its JIT
/// stack limit): the Python detector decides it instead.
struct Undecided;

impl From<pcre2::Error> for Undecided {
    fn from(_: pcre2::Error) -> Self {
        Undecided
    }
}

type Res<T> = Result<T, Undecided>;

// detect.py's passes, in its order; a gate pattern opens one of them.
const PASS_NAMES: [&str; 15] = [
    "secrets",
    "ibans",
    "cards",
    "ssn_dashed",
    "ssn_word",
    "plus",
    "double_zero",
    "trunk_bracket",
    "national",
    "nanp",
    "weak_number",
    "phone_word",
    "header_words",
    "ipv4s",
    "ipv6s",
];
const SECRETS: u32 = 0;
const IBANS: u32 = 1;
const CARDS: u32 = 2;
const SSN_DASHED: u32 = 3;
const SSN_WORD: u32 = 4;
const NANP: u32 = 9;
const WEAK_NUMBER: u32 = 10;
const PHONE_WORD: u32 = 11;
const HEADER_WORDS: u32 = 12;
const IPV4S: u32 = 13;
const IPV6S: u32 = 14;
// Which of the gate DFAs holds the gate patterns of each pass (in PASS_NAMES order): digit
// shapes in two groups, words, and patterns that start on a rare literal.
const GATE_DFAS: usize = 4;
const GATE_GROUP: [usize; 15] = [3, 0, 0, 0, 2, 3, 1, 3, 1, 1, 1, 2, 2, 0, 3];
// the pass of each international / trunk / national phone pattern, in order
const INTL_PASSES: [u32; 4] = [5, 6, 7, 8];

fn compile(name: &str, pattern: &str, multi_line: bool) -> PyResult<Regex> {
    RegexBuilder::new()
        .jit_if_available(true)
        .multi_line(multi_line)
        .build(pattern)
        .map_err(|e| PyValueError::new_err(format!("pattern {name}: {e}")))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_delim(b: u8) -> bool {
    matches!(b, b',' | b';' | b'\t' | b'|')
}

/// The byte offset `n` characters before `pos` (or 0): detect.py's windows count characters.
fn back_chars(t: &[u8], mut pos: usize, mut n: usize) -> usize {
    while n > 0 && pos > 0 {
        pos -= 1;
        while pos > 0 && (t[pos] & 0xC0) == 0x80 {
            pos -= 1;
        }
        n -= 1;
    }
    pos
}

/// The character starting at byte `i` of UTF-8 text.
fn char_at(t: &[u8], i: usize) -> Option<char> {
    let len = match t.get(i)? {
        b if *b < 0x80 => 1,
        b if *b >= 0xF0 => 4,
        b if *b >= 0xE0 => 3,
        _ => 2,
    };
    std::str::from_utf8(t.get(i..i + len)?).ok()?.chars().next()
}

/// Whether the character at byte `i` may be a word character to Python's `re` (or a digit to
/// `str.isdigit`): Rust's `is_alphanumeric` (Alphabetic or Numeric) takes in every character
/// Python's `str.isalnum` does. Punctuation, symbols, spaces and emoji are not, to either.
fn maybe_word(t: &[u8], i: usize) -> bool {
    char_at(t, i).is_none_or(|c| c.is_alphanumeric() || c == '_')
}

/// Whether a stretch of UTF-8 text holds a non-ASCII letter or digit.
fn has_non_ascii_word(t: &[u8]) -> bool {
    !t.is_ascii()
        && std::str::from_utf8(t).map_or(true, |s| {
            s.chars().any(|c| !c.is_ascii() && c.is_alphanumeric())
        })
}

fn find_byte(t: &[u8], from: usize, b: u8) -> Option<usize> {
    memchr::memchr(b, t.get(from..)?).map(|i| from + i)
}

/// Non-overlapping matches from `start`, as `re.findall` / `re.finditer` walk them.
fn each_match(
    re: &Regex,
    t: &[u8],
    start: usize,
    mut f: impl FnMut(usize, usize) -> Res<()>,
) -> Res<()> {
    let mut pos = start;
    while pos <= t.len() {
        match re.find_at(t, pos)? {
            None => break,
            Some(m) => {
                f(m.start(), m.end())?;
                pos = if m.end() > m.start() {
                    m.end()
                } else {
                    m.end() + 1
                };
            }
        }
    }
    Ok(())
}

/// `each_match` for a pattern whose groups matter: `f` gets the match's start and its groups.
fn each_capture(
    re: &Regex,
    t: &[u8],
    start: usize,
    mut f: impl FnMut(usize, &CaptureLocations) -> Res<()>,
) -> Res<()> {
    let mut locs = re.capture_locations();
    let mut pos = start;
    while pos <= t.len() {
        let Some(m) = re.captures_read_at(&mut locs, t, pos)? else {
            break;
        };
        f(m.start(), &locs)?;
        pos = if m.end() > m.start() {
            m.end()
        } else {
            m.end() + 1
        };
    }
    Ok(())
}

/// Digits of a phone-number match: what is left without its separators (detect.py's
/// `_ONLY_DIGITS`).
fn phone_digits(number: &[u8]) -> usize {
    number.iter().filter(|c| !b" .-()+".contains(c)).count()
}

fn count(re: &Regex, t: &[u8], start: usize) -> Res<usize> {
    let mut n = 0;
    each_match(re, t, start, |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Luhn check of ASCII digits.
fn luhn_ok(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &c) in d.iter().rev().enumerate() {
        let mut v = u32::from(c - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn num(d: &[u8]) -> u32 {
    d.iter().fold(0, |acc, &c| acc * 10 + u32::from(c - b'0'))
}

/// Issuer prefix and length of a real card scheme (detect.py `_card_brand_ok`).
fn card_brand_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p2 = num(&d[..2]);
    let p3 = num(&d[..3]);
    let p4 = num(&d[..4]);
    if d[0] == b'4' {
        return matches!(n, 13 | 16 | 19);
    }
    if (51..=55).contains(&p2) {
        return n == 16;
    }
    if (22..=27).contains(&p2) {
        return n == 16 && (2221..=2720).contains(&p4);
    }
    if p2 == 34 || p2 == 37 {
        return n == 15;
    }
    if matches!(p2, 36 | 38 | 39) || (300..=305).contains(&p3) {
        return (14..=19).contains(&n);
    }
    if p2 == 35 {
        return (16..=19).contains(&n) && (3528..=3589).contains(&p4);
    }
    if p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || p2 == 62 {
        return (16..=19).contains(&n);
    }
    if matches!(
        p4,
        5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763
    ) {
        return (12..=19).contains(&n);
    }
    if (56..=58).contains(&p2) {
        return (12..=19).contains(&n);
    }
    false
}

/// ISO 7064 mod 97-10 over a compact IBAN (detect.py `iban_ok`).
fn iban_ok(s: &[u8]) -> bool {
    if !(15..=34).contains(&s.len()) || !s.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut r: u32 = 0;
    for &c in s[4..].iter().chain(&s[..4]) {
        let c = c.to_ascii_uppercase();
        r = if c.is_ascii_digit() {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c - b'A') + 10) % 97
        };
    }
    r == 1
}

#[pyclass(frozen)]
struct Detector {
    /// detect.py's gate patterns as one DFA; per pattern, its pass and how far before the end
    /// of its first match that pass may start
    gate: [dense::DFA<Vec<u32>>; GATE_DFAS],
    /// per DFA and its pattern: (gate pattern id, pass, back)
    gate_pass: [Vec<(usize, usize, usize)>; GATE_DFAS],
    secret: Regex,
    /// detect.py's _SECRET_LITERALS that keep their case (one automaton, and per literal
    /// whether a word character may stand before it) ...
    secret_literals: (AhoCorasick, Vec<bool>),
    /// ... and those that ignore ASCII case, each with the offset of a byte in it that is not
    /// a letter: found with memchr and checked around, where a case-insensitive automaton
    /// scanned at 3 ns a byte
    secret_caseless: Vec<(Vec<u8>, usize, bool)>,
    email: Regex,
    iban: Regex,
    iban_head: Regex,
    card: Regex,
    ssn: Regex,
    ssn_ctx: Regex,
    ipv4: Regex,
    version_before_reversed: Regex,
    ipv6: Regex,
    ipv6_address: Regex,
    phone_intl: Vec<(Regex, usize, usize, usize)>,
    phone_nanp: Vec<Regex>,
    phone_weak: Regex,
    national_strong: Regex,
    phone_word: Regex,
    header_word: Regex,
    phone_header: Regex,
    record_line: Regex,
    address: Regex,
    iban_len: HashMap<[u8; 2], usize>,
    tld_ok: HashSet<Vec<u8>>,
    personal_columns: HashSet<Vec<u8>>,
    bulk_emails: usize,
    bulk_record_lines: usize,
    phone_window: usize,
    phone_gap: usize,
}

/// What one pass over the text tells: per detection pass, where it may start
/// (`usize::MAX`: it cannot match); line breaks; lines with two or more delimiters.
struct Survey {
    at: [usize; 15],
    newlines: usize,
    record_lines: usize,
}

/// Per byte: 1 a field delimiter, 2 a line break, 0 anything else.
const LINE_CLASS: [u8; 256] = {
    let mut c = [0u8; 256];
    c[b',' as usize] = 1;
    c[b';' as usize] = 1;
    c[b'\t' as usize] = 1;
    c[b'|' as usize] = 1;
    c[b'\n' as usize] = 2;
    c
};

struct Found {
    classes: Vec<(usize, usize)>,
}

// Class labels as detect.CLASSES spells them; results list them in this order.
const CLASSES: [&str; 8] = [
    "secret",
    "email",
    "payment_card",
    "iban",
    "us_ssn",
    "phone",
    "ip_address",
    "bulk_personal_data",
];

fn class_name<'py>(py: Python<'py>, i: usize) -> &'py Bound<'py, PyString> {
    // interned once per interpreter: a result dict's keys are then shared, not allocated
    match i {
        0 => pyo3::intern!(py, "secret"),
        1 => pyo3::intern!(py, "email"),
        2 => pyo3::intern!(py, "payment_card"),
        3 => pyo3::intern!(py, "iban"),
        4 => pyo3::intern!(py, "us_ssn"),
        5 => pyo3::intern!(py, "phone"),
        6 => pyo3::intern!(py, "ip_address"),
        _ => pyo3::intern!(py, "bulk_personal_data"),
    }
}

impl Detector {
    fn scan_bytes(&self, t: &[u8]) -> Res<Found> {
        let mut found = Found {
            classes: Vec::with_capacity(4),
        };
        if t.is_empty() {
            return Ok(found);
        }
        let ascii = t.is_ascii();
        // Without a digit only secrets, e-mail, IPv6 and bulk data can be there (every other
        // pattern and every gate of those needs one): their passes run directly, at memchr
        // speed or close, where the gate DFAs would cost ~2 ns a byte. Most prose is this.
        // (A count, not `any`: it vectorises.)
        if t.iter()
            .fold(0usize, |n, b| n + usize::from(b.is_ascii_digit()))
            == 0
        {
            return self.scan_digit_free(t, ascii);
        }
        // one pass of the gate DFA: which PCRE2 passes can find anything, and from where
        let survey = self.survey(t)?;
        let at = survey.at;
        let on = |pass: u32| at[pass as usize] != usize::MAX;
        let from = |pass: u32| at[pass as usize];

        if on(SECRETS) {
            let k = count(&self.secret, t, from(SECRETS))?;
            if k > 0 {
                found.classes.push((0, k));
            }
        }
        // every e-mail match starts on its "@": a memchr finds the first one, no gate needed
        let emails = self.email_count(t, ascii)?;
        if emails > 0 {
            found.classes.push((1, emails));
        }
        let mut identifiers = emails;
        let k = if on(CARDS) {
            self.card_count(t, from(CARDS))?
        } else {
            0
        };
        if k > 0 {
            found.classes.push((2, k));
            identifiers += k;
        }
        let k = if on(IBANS) {
            self.iban_count(t, from(IBANS))?
        } else {
            0
        };
        if k > 0 {
            found.classes.push((3, k));
            identifiers += k;
        }
        let mut k = if on(SSN_DASHED) {
            count(&self.ssn, t, from(SSN_DASHED))?
        } else {
            0
        };
        if on(SSN_WORD) {
            k += count(&self.ssn_ctx, t, from(SSN_WORD))?;
        }
        if k > 0 {
            found.classes.push((4, k));
            identifiers += k;
        }
        let k = self.phone_count(t, &at)?;
        if k > 0 {
            found.classes.push((5, k));
            identifiers += k;
        }
        let mut ips = if on(IPV4S) {
            self.ipv4_count(t, from(IPV4S))?
        } else {
            0
        };
        if on(IPV6S) {
            ips += self.ipv6_count(t, from(IPV6S))?;
        }
        if ips > 0 {
            found.classes.push((6, ips));
        }
        if self.bulk(t, &survey, ascii, emails, identifiers)? {
            found.classes.push((7, 1));
        }
        Ok(found)
    }

    /// Per pass, the offset to start it from, as detect.py's Hyperscan gate computes it: the
    /// end of the first match of each gate pattern, minus the longest that gate match can be.
    fn survey(&self, t: &[u8]) -> Res<Survey> {
        let mut at = [usize::MAX; 15];
        let mut seen = 0u64; // gate patterns already reported (there are fewer than 64)
        let mut record = |g: usize, sid, end: usize| {
            let dfa = &self.gate[g];
            for k in 0..dfa.match_len(sid) {
                let (id, pass, back) = self.gate_pass[g][dfa.match_pattern(sid, k).as_usize()];
                if seen & (1 << id) == 0 {
                    // like Hyperscan's SINGLEMATCH: only each pattern's first match counts
                    seen |= 1 << id;
                    at[pass] = at[pass].min(end.saturating_sub(back));
                }
            }
        };
        // A plain loop over the DFAs' transitions instead of the library's overlapping
        // search, which stops at every return to the start state (measured 2x slower here).
        // Four small DFAs step side by side: their chains of dependent loads overlap, and
        // each stays in cache where one DFA of all the patterns took 2.3 MB. Matches are
        // reported one byte late, so the offset of the byte that reveals one is its end.
        // The bulk check's line counts ride along for the same reason.
        let (mut newlines, mut record_lines, mut delims) = (0usize, 0usize, 0u32);
        let input = Input::new(t);
        let mut sid = [StateID::ZERO; GATE_DFAS];
        for (g, dfa) in self.gate.iter().enumerate() {
            sid[g] = dfa.start_state_forward(&input).map_err(|_| Undecided)?;
        }
        for (i, &b) in t.iter().enumerate() {
            let mut special = false;
            for (s, dfa) in sid.iter_mut().zip(&self.gate) {
                *s = dfa.next_state(*s, b);
                special |= dfa.is_special_state(*s);
            }
            match LINE_CLASS[usize::from(b)] {
                0 => {}
                1 => delims += 1,
                _ => {
                    newlines += 1;
                    record_lines += usize::from(delims >= 2);
                    delims = 0;
                }
            }
            if special {
                for (g, (&s, dfa)) in sid.iter().zip(&self.gate).enumerate() {
                    // unanchored with every match kept: never dead; no quit bytes configured
                    if dfa.is_match_state(s) {
                        record(g, s, i);
                    }
                }
            }
        }
        for (g, (&s, dfa)) in sid.iter().zip(&self.gate).enumerate() {
            let eoi = dfa.next_eoi_state(s);
            if dfa.is_match_state(eoi) {
                record(g, eoi, t.len());
            }
        }
        record_lines += usize::from(delims >= 2);
        Ok(Survey {
            at,
            newlines,
            record_lines,
        })
    }

    fn email_count(&self, t: &[u8], ascii: bool) -> Res<usize> {
        let Some(first) = find_byte(t, 0, b'@') else {
            return Ok(0);
        };
        if !ascii {
            // The pattern asks Unicode questions at two places only: whether the character
            // before "@" is a word character, and whether the one after the domain's run of
            // [A-Za-z0-9.-] is (or, after a ":", the next one; a case-insensitive [a-z] can
            // also take the Kelvin sign there). Non-ASCII at either: Python decides.
            let mut at = Some(first);
            while let Some(p) = at {
                if p > 0 && t[p - 1] >= 0x80 && maybe_word(t, back_chars(t, p, 1)) {
                    return Err(Undecided);
                }
                let mut q = p + 1;
                while q < t.len() && (t[q].is_ascii_alphanumeric() || t[q] == b'.' || t[q] == b'-')
                {
                    q += 1;
                }
                if q < t.len()
                    && ((t[q] >= 0x80 && maybe_word(t, q))
                        || (t[q] == b':'
                            && t.get(q + 1).is_some_and(|&c| c >= 0x80)
                            && maybe_word(t, q + 1)))
                {
                    return Err(Undecided);
                }
                at = find_byte(t, p + 1, b'@');
            }
        }
        let mut n = 0;
        each_capture(&self.email, t, first, |_, locs| {
            if let Some((s, e)) = locs.get(1) {
                if self.tld_ok.contains(&t[s..e].to_ascii_lowercase()) {
                    n += 1;
                }
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn card_count(&self, t: &[u8], from: usize) -> Res<usize> {
        let mut n = 0;
        let mut d = Vec::with_capacity(19);
        each_match(&self.card, t, from, |s, e| {
            d.clear();
            d.extend(t[s..e].iter().copied().filter(u8::is_ascii_digit));
            if card_brand_ok(&d) && luhn_ok(&d) {
                // the tail of an IBAN (even one that fails mod-97) is not a card
                let lo = back_chars(t, s, 20);
                if self.iban_head.find_at(&t[..s], lo)?.is_none() {
                    n += 1;
                }
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn iban_count(&self, t: &[u8], from: usize) -> Res<usize> {
        let mut n = 0;
        each_match(&self.iban, t, from, |s, e| {
            let cand = &t[s..e];
            let Some(&want) = self.iban_len.get(&[cand[0], cand[1]]) else {
                return Ok(());
            };
            let mut compact: Vec<u8> = cand.iter().copied().filter(|&c| c != b' ').collect();
            if compact.len() < want {
                return Ok(());
            }
            if compact.len() > want {
                // cut at the country's length, only where the printed groups allow a cut
                let mut cut = cand.len();
                let mut seen = 0;
                for (i, &c) in cand.iter().enumerate() {
                    if c != b' ' {
                        seen += 1;
                        if seen == want {
                            cut = i + 1;
                            break;
                        }
                    }
                }
                if cut < cand.len() && cand[cut] != b' ' {
                    return Ok(());
                }
                compact.truncate(want);
            }
            if iban_ok(&compact) {
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn phone_count(&self, t: &[u8], at: &[usize; 15]) -> Res<usize> {
        let on = |pass: u32| at[pass as usize] != usize::MAX;
        let mut n = 0;
        if on(NANP) {
            for re in &self.phone_nanp {
                n += count(re, t, at[NANP as usize])?;
            }
        }
        for ((re, group, lo, hi), pass) in self.phone_intl.iter().zip(INTL_PASSES) {
            if !on(pass) {
                continue;
            }
            each_capture(re, t, at[pass as usize], |_, locs| {
                match locs.get(*group) {
                    // a shape without the group is always counted (findall gives "")
                    None => n += 1,
                    Some((s, e)) => {
                        let k = phone_digits(&t[s..e]);
                        if k == 0 || (*lo..=*hi).contains(&k) {
                            n += 1;
                        }
                    }
                }
                Ok(())
            })?;
        }
        if !(on(WEAK_NUMBER) && on(PHONE_WORD)) {
            return Ok(n); // a weak number counts only near a phone word or under a phone column
        }
        let mut header: Option<bool> = if on(HEADER_WORDS) { None } else { Some(false) };
        let header_from = at[HEADER_WORDS as usize];
        each_match(&self.phone_weak, t, at[WEAK_NUMBER as usize], |s, e| {
            let number = &t[s..e];
            let k = phone_digits(number);
            if !(10..=11).contains(&k) || self.national_strong.is_match(number)? {
                return Ok(()); // not a weak number, or counted with the strong shapes
            }
            if self.phone_context(t, s)? {
                n += 1;
                return Ok(());
            }
            let h = match header {
                Some(h) => h,
                None => {
                    let h = self.table_header_with_phone(t, header_from)?;
                    header = Some(h);
                    h
                }
            };
            if h && in_table_row(t, s) {
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// detect.py `_PHONE_CONTEXT.search(text, start - window, start)`: a phone word, then up to
    /// `phone_gap` characters that are neither an ASCII digit nor a line break, then the end
    /// (or a final line break). Only the last word can be the closest, so only it is checked.
    fn phone_context(&self, t: &[u8], start: usize) -> Res<bool> {
        let lo = back_chars(t, start, self.phone_window);
        let sub = &t[..start];
        let mut last_end = None;
        each_match(&self.phone_word, sub, lo, |_, e| {
            last_end = Some(e);
            Ok(())
        })?;
        let Some(e) = last_end else {
            return Ok(false);
        };
        let mut gap = &t[e..start];
        if let Some((&b'\n', rest)) = gap.split_last() {
            gap = rest;
        }
        if gap.iter().any(|&c| c == b'\n' || c.is_ascii_digit()) {
            return Ok(false);
        }
        let chars = gap.iter().filter(|&&c| (c & 0xC0) != 0x80).count();
        Ok(chars <= self.phone_gap)
    }

    /// detect.py `_phone_header`: a table header line with a phone column.
    fn table_header_with_phone(&self, t: &[u8], from: usize) -> Res<bool> {
        let Some(first) = self.header_word.find_at(t, from)? else {
            return Ok(false);
        };
        let end = find_byte(t, first.end(), b'\n').unwrap_or(t.len());
        if t[first.end()..end].iter().any(|&c| is_delim(c)) {
            return Ok(true);
        }
        if end + 1 > t.len() {
            return Ok(false);
        }
        Ok(self.phone_header.find_at(t, end + 1)?.is_some())
    }

    fn ipv4_count(&self, t: &[u8], from: usize) -> Res<usize> {
        let mut n = 0;
        let mut rev: Vec<u8> = Vec::with_capacity(64);
        each_capture(&self.ipv4, t, from, |m_start, locs| {
            // the empty group that took part marks where the first octet starts
            let start = (1..locs.len())
                .find_map(|i| locs.get(i))
                .map_or(m_start, |(s, _)| s);
            if start > 0 && t[start - 1] >= 0x80 && maybe_word(t, back_chars(t, start, 1)) {
                return Err(Undecided); // `str.isdigit` of a non-ASCII character
            }
            let lo = back_chars(t, start, 16);
            rev.clear();
            let window = &t[lo..start];
            if window.is_ascii() {
                rev.extend(window.iter().rev());
            } else {
                let s = std::str::from_utf8(window).map_err(|_| Undecided)?;
                let r: String = s.chars().rev().collect();
                rev.extend_from_slice(r.as_bytes());
            }
            if !self.version_before_reversed.is_match(&rev)? {
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn ipv6_count(&self, t: &[u8], from: usize) -> Res<usize> {
        let mut n = 0;
        each_match(&self.ipv6, t, from, |s, e| {
            if let Some(&c0) = t.get(e) {
                if is_word(c0) {
                    return Ok(()); // runs on into a word
                }
                if c0 == b'.' {
                    if let Some(&c1) = t.get(e + 1) {
                        if c1 >= 0x80 && maybe_word(t, e + 1) {
                            return Err(Undecided); // `str.isdigit` of a non-ASCII character
                        }
                        if c1.is_ascii_digit() {
                            return Ok(()); // an IPv4 tail (::ffff:1.2.3.4)
                        }
                    }
                }
            }
            let mut start = s;
            while start > 0 && t[start - 1].is_ascii_hexdigit() {
                start -= 1;
            }
            let cand = &t[start..e];
            if !self.ipv6_address.is_match(cand)? {
                return Ok(());
            }
            let groups = cand.split(|&c| c == b':').filter(|g| !g.is_empty()).count();
            let double = cand.windows(2).any(|w| w == b"::");
            if groups >= 2 && (groups == 8 || double) {
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn personal_header(&self, line: &[u8]) -> bool {
        let joined: Vec<u8> = line
            .iter()
            .map(u8::to_ascii_lowercase)
            .filter(|c| !b" _-".contains(c))
            .collect();
        let fields: HashSet<&[u8]> = joined
            .split(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
            .filter(|f| self.personal_columns.contains(*f))
            .collect();
        fields.len() >= 2
    }

    /// Where the first of detect.py's _SECRET_LITERALS that could begin a secret stands.
    fn first_secret_literal(&self, t: &[u8]) -> Option<usize> {
        // `(?<!\w)` in the pattern: not right after an ASCII word character
        let can_begin =
            |start: usize, word_ok: bool| word_ok || start == 0 || !is_word(t[start - 1]);
        let mut first: Option<usize> = None;
        for (lit, anchor, word_ok) in &self.secret_caseless {
            for i in memchr::memchr_iter(lit[*anchor], t) {
                let Some(start) = i.checked_sub(*anchor) else {
                    continue;
                };
                if first.is_some_and(|f| start >= f) {
                    break;
                }
                if t.get(start..start + lit.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(lit))
                    && can_begin(start, *word_ok)
                {
                    first = Some(start);
                    break;
                }
            }
        }
        let (ac, word_ok) = &self.secret_literals;
        let mut pos = 0;
        let mut first_hit: Option<usize> = None;
        let mut passed_over = 0;
        // leftmost matches (found with the SIMD prefilter); after one that cannot begin a
        // secret, the next search starts one byte on, so overlapping literals are seen
        while let Some(m) = ac.find(AcInput::new(t).span(pos..t.len())) {
            if first.is_some_and(|f| m.start() >= f) {
                break;
            }
            first_hit.get_or_insert(m.start());
            if can_begin(m.start(), word_ok[m.pattern().as_usize()]) {
                return Some(m.start());
            }
            // many that cannot ("task-", "ask-"): a search for each costs more than the
            // secret pattern's own scan from the first of them, which is as safe
            passed_over += 1;
            if passed_over > 8 {
                return first_hit;
            }
            pos = m.start() + 1;
        }
        first
    }

    fn scan_digit_free(&self, t: &[u8], ascii: bool) -> Res<Found> {
        let mut found = Found {
            classes: Vec::with_capacity(2),
        };
        // every secret match starts at or after one of these literals
        if let Some(start) = self.first_secret_literal(t) {
            let k = count(&self.secret, t, start)?;
            if k > 0 {
                found.classes.push((0, k));
            }
        }
        let emails = self.email_count(t, ascii)?;
        if emails > 0 {
            found.classes.push((1, emails));
        }
        let ips = if find_byte(t, 0, b':').is_some() {
            self.ipv6_count(t, 0)?
        } else {
            0
        };
        if ips > 0 {
            found.classes.push((6, ips));
        }
        let newlines = memchr::memchr_iter(b'\n', t).count();
        let survey = Survey {
            at: [usize::MAX; 15],
            newlines,
            record_lines: if newlines + 1 >= self.bulk_record_lines {
                record_lines(t)
            } else {
                0
            },
        };
        if self.bulk(t, &survey, ascii, emails, emails)? {
            found.classes.push((7, 1));
        }
        Ok(found)
    }

    fn bulk(
        &self,
        t: &[u8],
        survey: &Survey,
        ascii: bool,
        emails: usize,
        identifiers: usize,
    ) -> Res<bool> {
        let lines_needed = self.bulk_record_lines;
        if emails >= self.bulk_emails {
            return Ok(true);
        }
        if survey.newlines + 1 < lines_needed || survey.record_lines < lines_needed {
            return Ok(false);
        }
        if identifiers >= lines_needed {
            return Ok(true);
        }
        // `str.lower` and Unicode `\b`/`\d` on a row with a non-ASCII letter or digit:
        // Python decides (other non-ASCII characters are neither, to both)
        let unicode_row = |(s, e): (usize, usize)| !ascii && has_non_ascii_word(&t[s..e]);
        let mut lines: Vec<(usize, usize)> = Vec::new();
        each_match(&self.record_line, t, 0, |s, e| {
            lines.push((s, e));
            Ok(())
        })?;
        let first = &lines[..lines.len().min(4)];
        for &(s, e) in first.iter().take(2) {
            if unicode_row((s, e)) {
                return Err(Undecided);
            }
            if self.personal_header(&t[s..e]) {
                return Ok(true);
            }
        }
        let mut with_address = 0;
        for &(s, e) in first {
            if unicode_row((s, e)) {
                return Err(Undecided);
            }
            if self.address.is_match(&t[s..e])? {
                with_address += 1;
            }
        }
        if with_address < 2 {
            return Ok(false);
        }
        for &(s, e) in &lines[first.len()..] {
            if unicode_row((s, e)) {
                return Err(Undecided);
            }
            if self.address.is_match(&t[s..e])? {
                with_address += 1;
            }
        }
        Ok(with_address >= lines_needed)
    }
}

type SecretLiterals = ((AhoCorasick, Vec<bool>), Vec<(Vec<u8>, usize, bool)>);

fn secret_literal_search(literals: &[(String, bool, bool)]) -> PyResult<SecretLiterals> {
    let (pats, word_ok): (Vec<&str>, Vec<bool>) = literals
        .iter()
        .filter(|(_, caseless, _)| !caseless)
        .map(|(lit, _, ok)| (lit.as_str(), *ok))
        .unzip();
    let ac = AhoCorasick::builder()
        .match_kind(AcMatchKind::LeftmostFirst)
        .build(pats)
        .map_err(|e| PyValueError::new_err(format!("secret literals: {e}")))?;
    let mut caseless = Vec::new();
    for (lit, _, ok) in literals.iter().filter(|(_, caseless, _)| *caseless) {
        let anchor = lit
            .bytes()
            .position(|b| !b.is_ascii_alphabetic())
            .ok_or_else(|| {
                PyValueError::new_err(format!("caseless literal {lit:?} is all letters"))
            })?;
        caseless.push((lit.as_bytes().to_vec(), anchor, *ok));
    }
    Ok(((ac, word_ok), caseless))
}

/// Lines with two or more field delimiters.
fn record_lines(t: &[u8]) -> usize {
    t.split(|&b| b == b'\n')
        .filter(|line| line.iter().filter(|&&b| is_delim(b)).count() >= 2)
        .count()
}

fn in_table_row(t: &[u8], pos: usize) -> bool {
    let line_start = t[..pos]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = find_byte(t, pos, b'\n').unwrap_or(t.len());
    t[line_start..line_end].iter().any(|&c| is_delim(c))
}

#[pymethods]
impl Detector {
    /// `patterns`: name -> (Python `re` source, MULTILINE); `phone_intl`: (source, lowest and
    /// highest digit count of group "n"). Everything else is detect.py's constants.
    #[new]
    #[pyo3(signature = (*, gates, secret_literals, patterns, phone_intl, phone_nanp, iban_len, tld_ok, personal_columns,
                        bulk_emails, bulk_record_lines, phone_window, phone_gap))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        gates: Vec<(String, String, bool, usize)>,
        secret_literals: Vec<(String, bool, bool)>,
        patterns: HashMap<String, (String, bool)>,
        phone_intl: Vec<(String, usize, usize)>,
        phone_nanp: Vec<String>,
        iban_len: HashMap<String, usize>,
        tld_ok: Vec<String>,
        personal_columns: Vec<String>,
        bulk_emails: usize,
        bulk_record_lines: usize,
        phone_window: usize,
        phone_gap: usize,
    ) -> PyResult<Self> {
        let get = |name: &str| -> PyResult<Regex> {
            let (src, ml) = patterns
                .get(name)
                .ok_or_else(|| PyValueError::new_err(format!("missing pattern {name}")))?;
            compile(name, src, *ml)
        };
        let anchored = |name: &str, full: bool| -> PyResult<Regex> {
            let (src, ml) = patterns
                .get(name)
                .ok_or_else(|| PyValueError::new_err(format!("missing pattern {name}")))?;
            let wrapped = format!("\\A(?:{src}){}", if full { "\\z" } else { "" });
            compile(name, &wrapped, *ml)
        };
        let mut intl = Vec::new();
        for (src, lo, hi) in &phone_intl {
            let re = compile("phone_intl", src, false)?;
            let group = re
                .capture_names()
                .iter()
                .position(|n| n.as_deref() == Some("n"))
                .ok_or_else(|| PyValueError::new_err("phone_intl pattern without group n"))?;
            intl.push((re, group, *lo, *hi));
        }
        let mut lens = HashMap::new();
        for (cc, n) in iban_len {
            let b = cc.as_bytes();
            if b.len() != 2 {
                return Err(PyValueError::new_err(format!("IBAN country {cc:?}")));
            }
            lens.insert([b[0], b[1]], n);
        }
        if gates.len() >= 64 {
            return Err(PyValueError::new_err("at most 63 gate patterns"));
        }
        let mut sources: [Vec<String>; GATE_DFAS] = Default::default();
        let mut gate_pass: [Vec<(usize, usize, usize)>; GATE_DFAS] = Default::default();
        for (id, (src, pass, caseless, back)) in gates.iter().enumerate() {
            let k = PASS_NAMES
                .iter()
                .position(|p| p == pass)
                .ok_or_else(|| PyValueError::new_err(format!("unknown pass {pass:?}")))?;
            let g = GATE_GROUP[k];
            // ASCII classes and word boundaries over bytes, as Hyperscan reads these patterns
            sources[g].push(format!("(?{}-u){src}", if *caseless { "i" } else { "" }));
            gate_pass[g].push((id, k, *back));
        }
        let mut dfas = Vec::with_capacity(GATE_DFAS);
        for group in &sources {
            dfas.push(
                dense::Builder::new()
                    .configure(
                        dense::DFA::config()
                            .match_kind(MatchKind::All)
                            // only match states are special: the scan loop stays tight
                            .accelerate(false)
                            .specialize_start_states(false)
                            .minimize(true)
                            .dfa_size_limit(Some(16 << 20))
                            .determinize_size_limit(Some(16 << 20)),
                    )
                    .syntax(syntax::Config::new().unicode(false).utf8(false))
                    .thompson(thompson::Config::new().utf8(false))
                    .build_many(group)
                    .map_err(|e| PyValueError::new_err(format!("gate patterns: {e}")))?,
            );
        }
        let gate: [dense::DFA<Vec<u32>>; GATE_DFAS] = dfas
            .try_into()
            .map_err(|_| PyValueError::new_err("gate DFAs"))?;
        let (cased, caseless) = secret_literal_search(&secret_literals)?;
        Ok(Detector {
            gate,
            gate_pass,
            secret: get("secret")?,
            secret_literals: cased,
            secret_caseless: caseless,
            email: get("email")?,
            iban: get("iban")?,
            iban_head: get("iban_head")?,
            card: get("card")?,
            ssn: get("ssn")?,
            ssn_ctx: get("ssn_ctx")?,
            ipv4: get("ipv4")?,
            version_before_reversed: anchored("version_before_reversed", false)?,
            ipv6: get("ipv6")?,
            ipv6_address: anchored("ipv6_address", true)?,
            phone_intl: intl,
            phone_nanp: phone_nanp
                .iter()
                .map(|s| compile("phone_nanp", s, false))
                .collect::<PyResult<_>>()?,
            phone_weak: get("phone_weak")?,
            national_strong: anchored("national_strong", true)?,
            phone_word: get("phone_word")?,
            header_word: get("header_word")?,
            phone_header: get("phone_header")?,
            record_line: get("record_line")?,
            address: get("address")?,
            iban_len: lens,
            tld_ok: tld_ok.into_iter().map(String::into_bytes).collect(),
            personal_columns: personal_columns
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            bulk_emails,
            bulk_record_lines,
            phone_window,
            phone_gap,
        })
    }

    /// Class -> count for `text` (only the classes found), or None when the text needs a
    /// Unicode-aware decision that only the Python detector makes exactly.
    fn scan<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.total(py, std::iter::once(text.clone()))
    }

    /// Class counts summed over `texts` (None and empty texts skipped), or None when any of
    /// them needs the Python detector (the caller then scans text by text).
    #[pyo3(signature = (*texts))]
    fn scan_all<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyTuple>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.total(py, texts.iter())
    }
}

impl Detector {
    fn total<'py>(
        &self,
        py: Python<'py>,
        texts: impl Iterator<Item = Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut total = [0usize; CLASSES.len()];
        for text in texts {
            if text.is_none() {
                continue;
            }
            // not UTF-8 encodable (a lone surrogate): Python's detector takes it as it is
            let Ok(text) = text.cast::<PyString>()?.to_str() else {
                return Ok(None);
            };
            // A bug that panics must not take the redactor down (a PanicException is no
            // Exception to its error handling): the text goes to the Python detector instead.
            let scanned = std::panic::catch_unwind(|| self.scan_bytes(text.as_bytes()));
            match scanned {
                Err(_) | Ok(Err(Undecided)) => return Ok(None),
                Ok(Ok(found)) => {
                    for (class, k) in found.classes {
                        total[class] += k;
                    }
                }
            }
        }
        let d = PyDict::new(py);
        for (i, &k) in total.iter().enumerate() {
            if k > 0 {
                d.set_item(class_name(py, i), k)?;
            }
        }
        Ok(Some(d))
    }
}

#[pymodule]
fn trustlog_detect(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Detector>()?;
    Ok(())
}
