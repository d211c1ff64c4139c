//! `hmm-sim`: the simulator's main job. Run with no arguments to mirror a
//! 1 GiB userfaultfd-backed region into a simulated device while CPU threads
//! invalidate it; `hmm-sim --help` lists the options.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use backend_sim::demo::{run, Config, USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match Config::parse(&args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hmm-sim: error: {e}");
            eprintln!("Try 'hmm-sim --help' for the options.");
            return ExitCode::from(2);
        }
    };
    let tty = std::io::stdout().is_terminal();
    let mut last_line = u64::MAX;
    let mut progress = |done: u64, total: u64| {
        let total = total.max(1);
        if tty {
            let width = 40;
            let filled = (done * width / total) as usize;
            print!(
                "\r[{}{}] {:>3}%  {done}/{total} pages",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                done * 100 / total
            );
            let _ = std::io::stdout().flush();
        } else {
            // Plain lines, one per 10%.
            let tenth = done * 10 / total;
            if tenth != last_line {
                last_line = tenth;
                println!("progress: {done}/{total} pages");
            }
        }
    };
    let result = run(&cfg, &mut progress);
    if tty {
        println!();
    }
    match result {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hmm-sim: error: {e}");
            ExitCode::FAILURE
        }
    }
}
