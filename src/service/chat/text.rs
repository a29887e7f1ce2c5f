//! Text rules: which names are valid, and what others see of a line.

/// The longest name, in characters.
pub const MAX_NAME: usize = 32;

/// A valid name, in the two forms chat uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// What others see: the name as typed, normalised by RFC 8265's `UsernameCasePreserved`
    /// profile (NFC, full-width forms mapped to their usual width, case kept).
    pub shown: String,
    /// The `UsernameCaseMapped` form (RFC 8265 §3.3: also case mapped): two names with the
    /// same folded form are the same name.
    pub folded: String,
    /// What decides uniqueness: the UTS #39 skeleton of the `UsernameCaseMapped` form (case
    /// mapped too), so names that differ only in case, width, normalisation or by confusable
    /// look-alikes (Cyrillic `а` for Latin `a`, `1` for `l`) have the same key.
    pub key: String,
}

/// Why a name is refused: each says what to change, in the member's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing typed.
    #[error("it is empty")]
    Empty,
    /// More than [`MAX_NAME`] characters.
    #[error("use at most 32 characters")]
    TooLong,
    /// Whitespace or a control character.
    #[error("no spaces or control characters")]
    SpaceOrControl,
    /// A default-ignorable code point (zero-width characters, bidi controls such as U+202E
    /// RIGHT-TO-LEFT OVERRIDE, variation selectors…): it would make the name look like
    /// another, or rearrange what is shown around it.
    #[error("no invisible characters (U+{0:04X})")]
    Invisible(u32),
    /// Only combining marks: nothing to see.
    #[error("a name needs a visible character")]
    NothingVisible,
    /// A character the PRECIS username profile does not allow (RFC 8265 §3.3: symbols and
    /// punctuation outside ASCII, compatibility forms, unassigned code points, a mix of
    /// directions the bidi rule of RFC 5893 refuses…).
    #[error("U+{0:04X} is not allowed in names")]
    Disallowed(u32),
    /// Refused by the PRECIS profile as a whole (the bidi rule, RFC 5893).
    #[error("mixes writing directions in a way that can be shown misleadingly")]
    Precis,
}

/// Checks a name and returns its shown form and its key ([`Name`]).
///
/// The rules, in order (the first that fails is the reason given): not empty, at most
/// [`MAX_NAME`] characters, no whitespace or control characters, no default-ignorable code
/// points (UTS #39 `Identifier_Type=Default_Ignorable`, which includes every bidi control), at
/// least one character that is not a combining mark, and RFC 8265's `UsernameCaseMapped`
/// profile (PRECIS `IdentifierClass`: letters and digits of any script and printable ASCII).
/// Greek, Cyrillic, CJK and accented names are allowed. Every table comes from a crate
/// (`precis-profiles`, `unicode-security`, `unicode-normalization`); none is written here.
///
/// # Errors
/// [`NameError`], a reason for the member.
pub fn check_name(name: &str) -> Result<Name, NameError> {
    use precis_profiles::precis_core::Error;
    use precis_profiles::precis_core::profile::PrecisFastInvocation;
    use precis_profiles::{UsernameCaseMapped, UsernameCasePreserved};
    use unicode_security::GeneralSecurityProfile;
    use unicode_security::general_security_profile::IdentifierType;

    let n = name.chars().count();
    if n == 0 {
        return Err(NameError::Empty);
    }
    if n > MAX_NAME {
        return Err(NameError::TooLong);
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::SpaceOrControl);
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.identifier_type() == Some(IdentifierType::Default_Ignorable))
    {
        return Err(NameError::Invisible(c as u32));
    }
    if name
        .chars()
        .all(unicode_normalization::char::is_combining_mark)
    {
        return Err(NameError::NothingVisible);
    }
    let refused = |e: Error| match e {
        Error::BadCodepoint(info) => NameError::Disallowed(info.cp),
        _ => NameError::Precis,
    };
    let shown = UsernameCasePreserved::enforce(name).map_err(refused)?;
    if shown.chars().count() > MAX_NAME {
        return Err(NameError::TooLong);
    }
    let mapped = UsernameCaseMapped::enforce(name).map_err(refused)?;
    // UTS #39 §4: the skeleton of the case-folded string, for case-insensitive confusables.
    let key = unicode_security::skeleton(&mapped).collect();
    Ok(Name {
        shown: shown.into_owned(),
        folded: mapped.into_owned(),
        key,
    })
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
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a\tb", "a\u{7}", &"x".repeat(33), "a\u{a0}b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    /// Issue 11: names that impersonate.
    #[test]
    fn names_that_look_like_another_or_like_nothing_are_refused() {
        let key = |n: &str| check_name(n).map(|n| n.key);
        // Invisible characters and bidi controls, wherever they are.
        for bad in [
            "alice\u{200b}",
            "\u{200b}",
            "\u{200b}\u{200c}\u{2060}",
            "\u{202e}ecila",
            "a\u{2066}b",
            "al\u{ad}ice",
            "alice\u{fe0f}",
        ] {
            assert!(
                matches!(check_name(bad), Err(NameError::Invisible(_))),
                "{bad:?}: {:?}",
                check_name(bad)
            );
        }
        assert_eq!(check_name("\u{301}\u{301}"), Err(NameError::NothingVisible));
        // PRECIS refuses symbols outside ASCII and compatibility forms.
        assert_eq!(check_name("a\u{2603}"), Err(NameError::Disallowed(0x2603)));
        assert!(check_name("\u{2460}").is_err(), "circled digit one");
        // One key for what looks alike: case, width, normalisation, confusables.
        let alice = key("alice").unwrap();
        for same in [
            "Alice",
            "ALICE",
            "\u{ff41}lice",                  // full-width a
            "\u{430}lice",                   // Cyrillic a
            "\u{430}l\u{456}\u{441}\u{435}", // Cyrillic a, i, c, e
            "a1ice",
        ] {
            assert_eq!(key(same).as_ref(), Ok(&alice), "{same:?}");
        }
        assert_eq!(key("e\u{301}mile"), key("\u{e9}mile"));
        assert_ne!(key("bob").unwrap(), alice);
        // What others see keeps the case, in NFC and usual width.
        assert_eq!(check_name("E\u{301}MILE").unwrap().shown, "\u{c9}MILE");
        assert_eq!(check_name("\u{ff21}lice").unwrap().shown, "Alice");
        // Real names in other scripts stay allowed.
        for ok in [
            "Σωκράτης",
            "Дмитрий",
            "名前",
            "José",
            "Zoë",
            "김민준",
            "محمد",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}: {:?}", check_name(ok));
        }
    }

    #[test]
    fn cleaning_keeps_tabs_and_replaces_invalid_utf8() {
        assert_eq!(clean(b"a\tb"), "a\tb");
        assert_eq!(clean(b"a\x07b\x1b[2Jc\x7f"), "ab[2Jc");
        assert_eq!(clean(b"caf\xc3\xa9 \xff!"), "café \u{fffd}!");
    }
}
