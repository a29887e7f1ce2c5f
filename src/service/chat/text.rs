//! Text rules: which names are valid, and what others see of a line.

/// The longest name, in characters.
pub const MAX_NAME: usize = 32;

/// Why a name is refused, if it is.
///
/// # Errors
/// A reason for the member.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let n = name.chars().count();
    if n == 0 {
        return Err("it is empty");
    }
    if n > MAX_NAME {
        return Err("use at most 32 characters");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("no spaces or control characters");
    }
    Ok(())
}

/// What others see of a line: invalid UTF-8 as U+FFFD, control characters other than tab
/// removed (a member cannot move anybody's cursor or ring their bell).
pub fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for ok in [
            "a",
            "Alice",
            "émile",
            "x".repeat(32).as_str(),
            "名前",
            "a<b>",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a\tb", "a\u{7}", &"x".repeat(33), "a\u{a0}b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cleaning_keeps_tabs_and_replaces_invalid_utf8() {
        assert_eq!(clean(b"a\tb"), "a\tb");
        assert_eq!(clean(b"a\x07b\x1b[2Jc\x7f"), "ab[2Jc");
        assert_eq!(clean(b"caf\xc3\xa9 \xff!"), "café \u{fffd}!");
    }
}
