//! The command line of the benchmarks. Arguments a benchmark does not know are passed over:
//! `cargo bench` passes `--bench`.

use std::str::FromStr;

/// The arguments after the program's name.
pub struct Args(std::iter::Skip<std::env::Args>);

impl Args {
    /// The next argument as a number; `usage` (`"--events N"`) is the panic's message if it is not.
    pub fn number<T: FromStr>(&mut self, usage: &str) -> T {
        self.0
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{usage}"))
    }

    /// The next argument, if any.
    pub fn next(&mut self) -> Option<String> {
        self.0.next()
    }
}

/// Calls `f` with every argument and the rest of them, from which it takes the argument's value.
pub fn each_arg(mut f: impl FnMut(&str, &mut Args)) {
    let mut args = Args(std::env::args().skip(1));
    while let Some(a) = args.next() {
        f(&a, &mut args);
    }
}

/// What an end-to-end benchmark replays: `--events N` (default 1,000,000) for `--products N`
/// products (default 300,000), with the release build skipped on `--skip-build`.
pub struct Workload {
    pub events: u64,
    pub products: u64,
    pub skip_build: bool,
}

impl Workload {
    /// Parses the command line; `other` gets every other argument.
    pub fn from_args(mut other: impl FnMut(&str, &mut Args)) -> Workload {
        let mut w = Workload {
            events: 1_000_000,
            products: 300_000,
            skip_build: false,
        };
        each_arg(|a, args| match a {
            "--events" => w.events = args.number("--events N"),
            "--products" => w.products = args.number("--products N"),
            "--skip-build" => w.skip_build = true,
            _ => other(a, args),
        });
        w
    }
}
