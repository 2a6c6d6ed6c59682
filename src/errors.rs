//! Errors as the user reads them: one line, each cause once.

/// An error and its causes on one line, each once: "dispatch failure: io error: ... tcp connect
/// error: Connection refused (os error 111)". A cause whose text the line already holds is left
/// out: this crate's errors name their cause in their own message as well as give it as their
/// source, and the SDK's `DisplayErrorContext` would append the whole error's `Debug` form,
/// which repeats the chain as nested structs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    for e in causes(err).skip(1) {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// An error, then its sources in turn.
pub fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("mount \"m\": {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("bucket \"b\" does not exist")]
    struct Inner;

    #[test]
    fn each_cause_is_named_once() {
        let err = anyhow::Error::new(Outer(Inner)).context("cannot mount /mnt");
        assert_eq!(
            chain(err.as_ref()),
            "cannot mount /mnt: mount \"m\": bucket \"b\" does not exist"
        );
        // What `{:#}` prints, for comparison: the cause twice.
        assert_eq!(
            format!("{err:#}").matches("does not exist").count(),
            2,
            "{err:#}"
        );
    }
}
