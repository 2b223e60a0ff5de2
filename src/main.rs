//! The `wsbeat` command: parse, set up logging, run, and map the outcome to the
//! contract's exit code, all in one place.

use std::process::ExitCode;

use wsbeat::config::{self, Parsed};
use wsbeat::{Ending, Exit};

fn main() -> ExitCode {
    let config = match config::parse_process() {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Help) => {
            print!("{}", config::USAGE);
            return Exit::Stopped.into();
        }
        Ok(Parsed::Version) => {
            println!("{}", config::version());
            return Exit::Stopped.into();
        }
        Err(err) => {
            wsbeat::logging::print_error(&format!("wsbeat: {err}"));
            return Exit::Usage.into();
        }
    };
    wsbeat::logging::init();
    let exit = match wsbeat::run(*config) {
        Ok(Ending::Stopped) => Exit::Stopped,
        Ok(Ending::ProbeAnswered(rtt)) => {
            println!("rtt_ms={:.3}", rtt.as_secs_f64() * 1000.0);
            Exit::Stopped
        }
        Ok(Ending::GaveUp(reason) | Ending::ProbeFailed(reason)) => {
            wsbeat::logging::print_error(&format!("wsbeat: {reason}"));
            Exit::GaveUp
        }
        Err(err) => {
            wsbeat::logging::print_error(&format!("wsbeat: {err}"));
            Exit::Config
        }
    };
    exit.into()
}
