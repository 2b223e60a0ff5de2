//! The command line, read the lexopt way (a loop over classified arguments, a value
//! pulled when an option wants one), and the `WSBEAT_*` fallback for each option.

use std::ffi::{OsStr, OsString};

use super::options::{Opt, Spec, Takes};
use super::{Config, Parsed, quote, shown_flag};
use crate::error::UsageError;

/// One argument, classified (lexopt's `Arg`).
enum Arg {
    /// `--name` or `--name=value`.
    Long {
        name: String,
        inline: Option<String>,
    },
    /// `-c...`: a short option, or several run together (not supported).
    Short(String),
    /// The URL: an argument not starting with `-`, `-` itself, or anything after `--`.
    Positional(String),
}

/// The raw arguments, handed out one [`Arg`] at a time.
struct Argv<I> {
    args: I,
    options_ended: bool,
}

impl<I: Iterator<Item = OsString>> Argv<I> {
    /// The next argument; a bare `--` ends the options and is not returned.
    fn next(&mut self) -> Result<Option<Arg>, UsageError> {
        loop {
            let Some(raw) = self.args.next() else {
                return Ok(None);
            };
            let arg = raw
                .into_string()
                .map_err(|raw| not_utf8(&raw, self.options_ended))?;
            if self.options_ended || arg == "-" || !arg.starts_with('-') {
                return Ok(Some(Arg::Positional(arg)));
            }
            if arg == "--" {
                self.options_ended = true;
                continue;
            }
            return Ok(Some(match arg.strip_prefix("--") {
                Some(long) => match long.split_once('=') {
                    Some((name, value)) => Arg::Long {
                        name: name.to_owned(),
                        inline: Some(value.to_owned()),
                    },
                    None => Arg::Long {
                        name: long.to_owned(),
                        inline: None,
                    },
                },
                None => Arg::Short(arg),
            }));
        }
    }

    /// The value of `flag`: the next argument, whatever it looks like (`--ping-text -V`).
    fn value(&mut self, flag: &str) -> Result<String, UsageError> {
        match self.args.next() {
            None => Err(UsageError::new(flag, "missing value")),
            Some(value) => value
                .into_string()
                .map_err(|_| UsageError::new(flag, "value is not valid UTF-8")),
        }
    }
}

/// The usage error for an argument that is not UTF-8, naming the flag if it is one.
fn not_utf8(raw: &OsStr, options_ended: bool) -> UsageError {
    let lossy = raw.to_string_lossy();
    if options_ended || lossy == "-" || !lossy.starts_with('-') {
        return UsageError::new("url", "not valid UTF-8");
    }
    match lossy.split_once('=') {
        Some((flag, _)) if flag.starts_with("--") && !flag.contains('\u{fffd}') => {
            UsageError::new(shown_flag(flag), "value is not valid UTF-8")
        }
        _ => UsageError::new(shown_flag(&lossy), "not valid UTF-8"),
    }
}

/// The command line, sorted but not yet interpreted.
#[derive(Debug, Default)]
pub(super) struct Args {
    /// Values of options that take one, in command-line order.
    values: Vec<(Opt, String)>,
    /// Switches given.
    switches: Vec<Opt>,
    /// The positional URL.
    url: Option<String>,
}

/// What the command line asks for before any value is checked.
pub(super) enum Scanned {
    /// Run with these arguments.
    Run(Args),
    /// Print help or the version (the rest of the command line is not looked at).
    Stop(Parsed),
}

/// Sorts the command line into options and the URL; stops early for help and version.
pub(super) fn scan<I>(args: I) -> Result<Scanned, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut argv = Argv {
        args: args.into_iter(),
        options_ended: false,
    };
    let mut out = Args::default();
    while let Some(arg) = argv.next()? {
        let (flag, opt, inline) = match arg {
            Arg::Positional(url) => {
                if let Some(first) = &out.url {
                    return Err(UsageError::new(
                        "url",
                        format!(
                            "unexpected second argument {} after {} (only one URL may be given)",
                            quote(&super::target::shown_url(&url)),
                            quote(&super::target::shown_url(first))
                        ),
                    ));
                }
                out.url = Some(url);
                continue;
            }
            Arg::Short(arg) => {
                let mut chars = arg.chars().skip(1);
                let opt = match (chars.next(), chars.next()) {
                    (Some(c), None) => Opt::short(c),
                    _ => None,
                };
                match opt {
                    Some(opt) => (arg, opt, None),
                    None => {
                        return Err(UsageError::new(
                            shown_flag(&arg),
                            "unknown option (see --help)",
                        ));
                    }
                }
            }
            Arg::Long { name, inline } => {
                let flag = format!("--{name}");
                match Opt::named(&name) {
                    Some(opt) => (flag, opt, inline),
                    None => {
                        return Err(UsageError::new(
                            shown_flag(&flag),
                            "unknown option (see --help)",
                        ));
                    }
                }
            }
        };
        match (&opt.spec().takes, inline) {
            (Takes::Switch(_) | Takes::Stop(_), Some(_)) => {
                return Err(UsageError::new(flag, "takes no value"));
            }
            (Takes::Stop(parsed), None) => return Ok(Scanned::Stop(parsed.clone())),
            (Takes::Switch(_), None) => out.switches.push(opt),
            (Takes::Value(..) | Takes::Values(..) | Takes::Later(_), inline) => {
                let value = match inline {
                    Some(value) => value,
                    None => argv.value(&flag)?,
                };
                out.values.push((opt, value));
            }
        }
    }
    Ok(Scanned::Run(out))
}

/// Each option from the command line first, then from the environment.
pub(super) struct Sources<'a> {
    args: Args,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Sources<'a> {
    pub(super) fn new(args: Args, env: &'a dyn Fn(&str) -> Option<String>) -> Sources<'a> {
        Sources { args, env }
    }

    /// `(WSBEAT_NAME, value)` when that variable is set and not empty.
    fn env_var(&self, var: String) -> Option<(String, String)> {
        match (self.env)(&var) {
            Some(value) if !value.is_empty() => Some((var, value)),
            _ => None,
        }
    }

    /// Every `--name` given, or else `WSBEAT_NAME` as the one value; each with where it
    /// came from.
    fn values(&self, opt: Opt) -> Vec<(String, String)> {
        let given: Vec<_> = self
            .args
            .values
            .iter()
            .filter(|(option, _)| *option == opt)
            .map(|(_, value)| (opt.flag(), value.clone()))
            .collect();
        if given.is_empty() {
            self.env_var(opt.spec().env()).into_iter().collect()
        } else {
            given
        }
    }

    /// `(where, value)` of the last `--name` given, else of `WSBEAT_NAME`.
    pub(super) fn value(&self, opt: Opt) -> Option<(String, String)> {
        self.values(opt).pop()
    }

    /// Where the value in effect of `opt` came from (`--name` or `WSBEAT_NAME`), if given.
    pub(super) fn origin(&self, opt: Opt) -> Option<String> {
        self.value(opt).map(|(from, _)| from)
    }

    /// A switch: given on the command line, or `WSBEAT_NAME` set to a boolean.
    /// Unlike other variables, an empty one is an error: the contract allows only the
    /// six words, and `WSBEAT_INSECURE=` would otherwise silently mean "no".
    fn switch(&self, spec: &Spec) -> Result<bool, UsageError> {
        if self.args.switches.contains(&spec.opt) {
            return Ok(true);
        }
        let var = spec.env();
        match (self.env)(&var) {
            None => Ok(false),
            Some(value) => match value.as_str() {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" => Ok(false),
                _ => Err(UsageError::new(
                    var,
                    format!(
                        "invalid value {} (use 1, true, yes or 0, false, no)",
                        quote(&value)
                    ),
                )),
            },
        }
    }

    /// Applies what was given for `spec` (if anything) to `config`.
    pub(super) fn apply(&self, spec: &Spec, config: &mut Config) -> Result<(), UsageError> {
        let set = match &spec.takes {
            Takes::Switch(set) => {
                if self.switch(spec)? {
                    set(config);
                }
                return Ok(());
            }
            Takes::Later(_) | Takes::Stop(_) => return Ok(()),
            Takes::Value(_, set) | Takes::Values(_, set) => set,
        };
        let given = match spec.takes {
            Takes::Values(..) => self.values(spec.opt),
            _ => self.value(spec.opt).into_iter().collect(),
        };
        for (from, value) in given {
            set(config, &value).map_err(|message| UsageError::new(from, message))?;
        }
        Ok(())
    }

    /// The URL argument, else `WSBEAT_URL`, with where it came from (`url` or `WSBEAT_URL`).
    pub(super) fn url(&self) -> Option<(String, String)> {
        match &self.args.url {
            Some(url) => Some(("url".into(), url.clone())),
            None => self.env_var(super::options::env_name("url")),
        }
    }

    /// The environment lookup.
    pub(super) fn env(&self) -> &'a dyn Fn(&str) -> Option<String> {
        self.env
    }
}
