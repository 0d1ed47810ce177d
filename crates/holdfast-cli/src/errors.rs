//! How the binary prints an error: its message, then each cause that adds
//! something. Library errors often put their cause in their own message and
//! also expose it as `source()`; printing both (anyhow's `{:#}`) repeats it:
//! `open: No such file or directory (os error 2): No such file or directory
//! (os error 2)`.

/// The error's message followed by every cause whose text the message so
/// far does not already contain, joined with `": "`.
pub(crate) fn chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// Like a `thiserror` error with `#[error("…: {source}")]` and `#[source]`.
    #[derive(Debug)]
    struct Open {
        source: std::io::Error,
    }

    impl std::fmt::Display for Open {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "/x/y.img: open: {}", self.source)
        }
    }

    impl std::error::Error for Open {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let shown_io = io.to_string();
        let err = Err::<(), _>(Open { source: io })
            .context("could not open the volume /x/y.img")
            .expect_err("an error");
        let text = chain(&err);
        assert_eq!(text.matches(&shown_io).count(), 1, "{text}");
        assert!(text.starts_with("could not open the volume /x/y.img: /x/y.img: open: "));
    }

    #[test]
    fn causes_not_in_the_message_are_kept_in_order() {
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(chain(&err), "outer: middle: inner");
    }
}
