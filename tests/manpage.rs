//! The man page `docs/wsbeat.1` (installed by `scripts/build-deb.sh`) against the real
//! `wsbeat --help`: the same options with the same value names and defaults, the same exit
//! codes and signals, the package's version, and every section a man page owes its reader.

use std::collections::{BTreeMap, BTreeSet};

use crate::util::{WAIT, Wsbeat};

const MAN: &str = include_str!("../docs/wsbeat.1");

/// `--flag VALUE` (as written in the help) → its defaults (`[...]` groups), in order.
type Options = BTreeMap<String, Vec<String>>;

/// The text of a roff line or paragraph without font escapes and with `\-` etc. resolved.
fn unroff(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => {
                chars.next(); // font name: B, I, R, P
            }
            Some('(') => {
                let name: String = chars.by_ref().take(2).collect();
                out.push_str(match name.as_str() {
                    "aq" => "'",
                    "mu" => "x",
                    "ha" => "^",
                    _ => "?",
                });
            }
            Some('-') => out.push('-'),
            Some('e') => out.push('\\'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The lines of section `name` (`.SH name` up to the next `.SH`).
fn section<'a>(name: &str) -> Vec<&'a str> {
    let mut lines = MAN.lines().skip_while(|l| {
        let l = l.trim_end();
        l != format!(".SH {name}") && l != format!(".SH \"{name}\"")
    });
    assert!(lines.next().is_some(), "docs/wsbeat.1 has no .SH {name}");
    lines.take_while(|l| !l.starts_with(".SH")).collect()
}

/// The tagged paragraphs of a section: (tag, body), both without roff markup.
fn tagged(lines: &[&str]) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == ".TP" && i + 1 < lines.len() {
            let tag = lines[i + 1]
                .strip_prefix(".B ")
                .unwrap_or(lines[i + 1])
                .to_owned();
            let body: Vec<&str> = lines[i + 2..]
                .iter()
                .take_while(|l| !l.starts_with(".TP") && !l.starts_with(".S") && **l != ".PP")
                .copied()
                .collect();
            items.push((unroff(&tag), unroff(&body.join(" "))));
            i += 2 + body.len();
        } else {
            i += 1;
        }
    }
    items
}

/// The options of `--help`: lines starting (after blanks) with `-`, the option part ending at
/// two blanks; continuation lines are indented and do not start with `-`. Each `[...]` that
/// starts a word is a default (`[20s]`; not the syntax in `auto[:MIN..MAX]` or `http://[user`).
fn help_options(help: &str) -> Options {
    fn finish(current: Option<(String, String)>, options: &mut Options) {
        if let Some((spec, text)) = current {
            options.insert(spec, defaults(&text));
        }
    }
    let mut options = Options::new();
    let mut current: Option<(String, String)> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.starts_with(' ') && trimmed.starts_with('-') {
            finish(current.take(), &mut options);
            let (spec, text) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
            current = Some((spec.to_owned(), text.trim().to_owned()));
        } else if let (Some((_, text)), true) = (current.as_mut(), line.starts_with("   ")) {
            text.push(' ');
            text.push_str(trimmed);
        } else {
            finish(current.take(), &mut options);
        }
    }
    finish(current, &mut options);
    options
}

/// The `[...]` groups of a help text that start a word, without the brackets.
fn defaults(text: &str) -> Vec<String> {
    let mut groups = Vec::new();
    let mut rest = text;
    let mut after_blank = true;
    while let Some(c) = rest.chars().next() {
        if c == '[' && after_blank {
            let mut depth = 0;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '[' => 1,
                        ']' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("unclosed [ in --help: {text:?}"));
            groups.push(rest[1..end].to_owned());
            rest = &rest[end + 1..];
            after_blank = false;
            continue;
        }
        after_blank = c == ' ';
        rest = &rest[c.len_utf8()..];
    }
    groups
}

/// The options of the man page's OPTIONS section: tag → the entry's text, words separated
/// by single blanks.
fn man_options() -> BTreeMap<String, String> {
    tagged(&section("OPTIONS"))
        .into_iter()
        .map(|(tag, body)| (tag, body.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

fn help() -> String {
    let out = Wsbeat::new().arg("--help").run(WAIT());
    assert_eq!(out.code, Some(0), "{}", out.dump());
    out.stdout
}

/// The paragraph of `text` that starts with `start`, as one line.
fn paragraph(text: &str, start: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("--help has no {start:?}"));
    let para = text[from..].split("\n\n").next().unwrap_or_default();
    para.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn man_page_options_match_help() {
    let help = help_options(&help());
    let man = man_options();
    assert!(
        help.len() >= 20,
        "parsed only {} options from --help: {help:?}",
        help.len()
    );
    let only_help: Vec<_> = help.keys().filter(|k| !man.contains_key(*k)).collect();
    let only_man: Vec<_> = man.keys().filter(|k| !help.contains_key(*k)).collect();
    assert!(
        only_help.is_empty() && only_man.is_empty(),
        "docs/wsbeat.1 OPTIONS and --help differ (flag and value name as printed).\n\
         in --help only: {only_help:?}\nin the man page only: {only_man:?}"
    );
    // Each default of --help is in the entry as "default: X" (any case), and the entry
    // says "default:" no more often than --help gives defaults.
    for (spec, defaults) in &help {
        let body = man[spec].to_lowercase();
        for default in defaults {
            assert!(
                body.contains(&format!("default: {}", default.to_lowercase())),
                "{spec}: --help gives the default [{default}], but its entry in \
                 docs/wsbeat.1 does not say \"default: {default}\":\n{}",
                man[spec]
            );
        }
        assert_eq!(
            body.matches("default:").count(),
            defaults.len(),
            "{spec}: docs/wsbeat.1 names other defaults than --help ({defaults:?}):\n{}",
            man[spec]
        );
    }
}

#[test]
fn man_page_exit_codes_and_signals_match_help() {
    let help = help();
    let exit = paragraph(&help, "Exit codes:");
    let help_codes: BTreeSet<String> = exit
        .trim_start_matches("Exit codes:")
        .split(';')
        .filter_map(|part| part.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let man_codes: BTreeSet<String> = tagged(&section("EXIT STATUS"))
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    assert_eq!(
        man_codes, help_codes,
        "EXIT STATUS of docs/wsbeat.1 vs {exit:?}"
    );
    assert!(
        help_codes.contains("64") && help_codes.contains("78"),
        "{help_codes:?}"
    );

    let signals = unroff(&section("SIGNALS").join(" "));
    let help_signals: BTreeSet<&str> = help
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.starts_with("SIG") && w.len() > 3)
        .collect();
    assert!(help_signals.contains("SIGHUP"), "{help_signals:?}");
    for sig in help_signals {
        assert!(
            signals.contains(sig),
            "{sig} (in --help) is not in SIGNALS of docs/wsbeat.1"
        );
    }
}

#[test]
fn man_page_has_the_sections_and_the_version() {
    let th = MAN
        .lines()
        .find(|l| l.starts_with(".TH "))
        .expect("docs/wsbeat.1 has no .TH line");
    let version = format!("\"wsbeat {}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        th.contains(&version),
        "{th:?} should name {version} (Cargo.toml)"
    );
    for name in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "ENVIRONMENT",
        "EXIT STATUS",
        "SIGNALS",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(!section(name).is_empty(), "section {name} is empty");
    }
    let files = unroff(&section("FILES").join(" "));
    for path in [
        "/etc/default/wsbeat",
        "/etc/wsbeat/headers",
        "/run/wsbeat/status",
    ] {
        assert!(files.contains(path), "FILES does not name {path}");
    }
}
