//! The one confirmation prompt (deploy, destroy, lock release): `--yes` answers it, a person at
//! the terminal answers it on stdin, and without either there is nowhere to ask: the caller
//! says what to do instead (each has its own help text).

use std::io::{BufRead, IsTerminal, Write};

/// What the answer must be for the change to go ahead.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// `y` or `yes` (the prompt shows `[y/N]`; anything else declines).
    Yes,
    /// Exactly this text (`fleet destroy` asks for the environment's name).
    Typed(&'a str),
}

/// How the question was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    Given,
    Refused,
    /// Not `--yes`, and stdin is not a terminal.
    NoTerminal,
}

/// Asks `question` on stderr unless `yes`; reads one line from stdin.
pub fn confirm(yes: bool, question: &str, expect: Expect<'_>) -> std::io::Result<Confirmation> {
    if yes {
        return Ok(Confirmation::Given);
    }
    if !std::io::stdin().is_terminal() {
        return Ok(Confirmation::NoTerminal);
    }
    let mut err = std::io::stderr().lock();
    match expect {
        Expect::Yes => write!(err, "{question} [y/N] ")?,
        Expect::Typed(_) => write!(err, "{question} ")?,
    }
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(if accepted(&answer, expect) {
        Confirmation::Given
    } else {
        Confirmation::Refused
    })
}

fn accepted(answer: &str, expect: Expect<'_>) -> bool {
    match expect {
        Expect::Yes => matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES"),
        Expect::Typed(text) => answer.trim() == text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_words_or_the_exact_name_confirm() {
        for (answer, want) in [
            ("y\n", true),
            ("yes", true),
            ("", false),
            ("n", false),
            ("yep", false),
        ] {
            assert_eq!(accepted(answer, Expect::Yes), want, "{answer:?}");
        }
        assert!(accepted("staging\n", Expect::Typed("staging")));
        assert!(!accepted("Staging", Expect::Typed("staging")));
        assert!(!accepted("y", Expect::Typed("staging")));
    }
}
