//! Terminal output: colour, TTY / CI detection, progress, tables.

use std::io::IsTerminal;

mod confirm;
pub use confirm::{Confirmation, Expect, confirm};

/// Decide once whether to colour output: `always`, `never`, or `auto`
/// (stdout is a TTY and `NO_COLOR` is unset).
pub fn init_color(choice: &str) {
    let on = match choice {
        "always" => true,
        "never" => false,
        _ => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    owo_colors::set_override(on);
}

/// True when a person is at the terminal (stderr is a TTY and `CI` is not set).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}
