//! Answers of S3-compatible servers that the SDK would refuse, put right before it reads them.
//!
//! The SDK checks the root element of each XML answer, and two servers users run this tool
//! against name it differently from S3 on one operation each: `rclone serve s3` answers
//! CreateMultipartUpload with `<InitiateMultipartUpload>` (S3: `<InitiateMultipartUploadResult>`),
//! moto answers CompleteMultipartUpload with `<CompleteMultipartUploadResponse>` (S3:
//! `<CompleteMultipartUploadResult>`). Their contents are S3's, so the interceptor renames
//! exactly those roots of exactly those operations' successful answers and touches nothing
//! else: an answer from S3 itself passes unchanged.

use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Operation, the root element some servers answer it with, S3's root element.
const WRONG_ROOTS: &[(&str, &str, &str)] = &[
    (
        "CreateMultipartUpload",
        "InitiateMultipartUpload",
        "InitiateMultipartUploadResult",
    ),
    (
        "CompleteMultipartUpload",
        "CompleteMultipartUploadResponse",
        "CompleteMultipartUploadResult",
    ),
];

/// The interceptor, registered on every client.
#[derive(Debug)]
pub(super) struct WrongRootNames;

impl Intercept for WrongRootNames {
    fn name(&self) -> &'static str {
        "WrongRootNames"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(operation) = cfg.load::<Metadata>().map(|m| m.name()) else {
            return Ok(());
        };
        let Some(&(_, from, to)) = WRONG_ROOTS.iter().find(|(op, ..)| *op == operation) else {
            return Ok(());
        };
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        // The body is still a stream here: it is read whole (these answers are a few hundred
        // bytes) and renamed at its end, which changes its length.
        response.headers_mut().remove("content-length");
        let body = std::mem::replace(response.body_mut(), SdkBody::taken());
        *response.body_mut() = SdkBody::from_body_1_x(Renamed {
            inner: Box::pin(body),
            read: Vec::new(),
            done: false,
            from,
            to,
        });
        Ok(())
    }
}

/// A body read whole, then given with its root renamed.
struct Renamed {
    inner: Pin<Box<SdkBody>>,
    read: Vec<u8>,
    done: bool,
    from: &'static str,
    to: &'static str,
}

impl http_body::Body for Renamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.read.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    let read = std::mem::take(&mut this.read);
                    let out = match std::str::from_utf8(&read)
                        .ok()
                        .and_then(|xml| rename_root(xml, this.from, this.to))
                    {
                        Some(renamed) => Bytes::from(renamed),
                        None => Bytes::from(read),
                    };
                    return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
                }
            }
        }
    }
}

/// `xml` with its root element renamed from `from` to `to`; `None` when its root is not `from`.
fn rename_root(xml: &str, from: &str, to: &str) -> Option<String> {
    // The prolog: declaration, comments, white space.
    let mut at = 0;
    loop {
        let rest = &xml[at..];
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        let skip = if trimmed.starts_with("<?") {
            trimmed.find("?>")? + 2
        } else if trimmed.starts_with("<!--") {
            trimmed.find("-->")? + 3
        } else {
            break;
        };
        at += skip;
    }
    let after_name = xml[at..].strip_prefix('<')?.strip_prefix(from)?;
    if !after_name.starts_with(|c: char| c == '>' || c.is_ascii_whitespace()) {
        return None;
    }
    let end = xml.trim_end().len();
    let close = format!("</{from}>");
    let close_at = end.checked_sub(close.len())?;
    let open_end = at + 1 + from.len();
    if close_at < open_end || xml[close_at..end] != close {
        return None;
    }
    Some(format!(
        "{}<{to}{}</{to}>{}",
        &xml[..at],
        &xml[open_end..close_at],
        &xml[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::rename_root;

    const INITIATE: &str = "InitiateMultipartUpload";
    const RESULT: &str = "InitiateMultipartUploadResult";

    #[test]
    fn rclones_initiate_answer_gets_s3s_root() {
        let rclone = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUpload>\n  \
                      <Bucket>bkt</Bucket>\n  <Key>r</Key>\n  <UploadId>0231</UploadId>\n\
                      </InitiateMultipartUpload>";
        assert_eq!(
            rename_root(rclone, INITIATE, RESULT).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult>\n  \
             <Bucket>bkt</Bucket>\n  <Key>r</Key>\n  <UploadId>0231</UploadId>\n\
             </InitiateMultipartUploadResult>"
        );
    }

    #[test]
    fn motos_complete_answer_gets_s3s_root_and_keeps_its_namespace() {
        let moto = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CompleteMultipartUploadResponse \
                    xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Key>r</Key><ETag>\"9a-1\"\
                    </ETag></CompleteMultipartUploadResponse>\n";
        let fixed = rename_root(
            moto,
            "CompleteMultipartUploadResponse",
            "CompleteMultipartUploadResult",
        )
        .unwrap();
        assert_eq!(
            fixed,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CompleteMultipartUploadResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Key>r</Key><ETag>\"9a-1\"\
             </ETag></CompleteMultipartUploadResult>\n"
        );
    }

    #[test]
    fn other_roots_are_left_alone() {
        // S3's own answer, whose root starts with the wrong name.
        let s3 = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult><UploadId>x</UploadId>\
                  </InitiateMultipartUploadResult>";
        assert_eq!(rename_root(s3, INITIATE, RESULT), None);
        // An error answered with 200, which the SDK reads as an error.
        let error = "<Error><Code>InternalError</Code></Error>";
        assert_eq!(rename_root(error, INITIATE, RESULT), None);
        // Not XML at all, or cut short.
        assert_eq!(rename_root("", INITIATE, RESULT), None);
        assert_eq!(
            rename_root("<InitiateMultipartUpload><Key>", INITIATE, RESULT),
            None
        );
        // A comment before the root is prolog.
        assert_eq!(
            rename_root(
                "<!-- x --><InitiateMultipartUpload></InitiateMultipartUpload>",
                INITIATE,
                RESULT
            )
            .unwrap(),
            "<!-- x --><InitiateMultipartUploadResult></InitiateMultipartUploadResult>"
        );
    }
}
