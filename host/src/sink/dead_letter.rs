//! Dead letters: an input record the pipeline could not process, written
//! to the dead-letter topic with its original key, value and headers
//! unchanged, plus headers saying why, where and when:
//!
//! | header                       | value                                   |
//! |------------------------------|-----------------------------------------|
//! | `pipeline.error.stage`       | stage that failed it (`host` for input that is not a JSON object) |
//! | `pipeline.error.reason`      | the reason, as text                     |
//! | `pipeline.source.topic`      | input topic                             |
//! | `pipeline.source.partition`  | input partition                         |
//! | `pipeline.source.offset`     | input offset                            |
//!
//! The record keeps its original timestamp, so re-driving it into the input
//! keeps event time.
//!
//! A dead letter the dead-letter topic refuses (too large even compressed,
//! or refused for its content) is written as a **reference** instead
//! ([`reference`]): a JSON value naming the input's topic, partition and
//! offset, its key and value sizes, the reason, the topic's refusal and the
//! first [`REFERENCE_PREFIX`] bytes of the value, with the header
//! `pipeline.dead_letter.reference: true`. The input itself stays in its
//! topic (until retention removes it), where the reference points.

use std::borrow::Cow;

use rskafka::record::{Record, RecordAndOffset};

use crate::stages::DeadLetter;

/// Header naming the stage that failed a record.
pub const ERROR_STAGE: &str = "pipeline.error.stage";
/// Header with the failure reason.
pub const ERROR_REASON: &str = "pipeline.error.reason";

/// Header marking a dead letter written as a reference to its input.
pub const REFERENCE: &str = "pipeline.dead_letter.reference";

/// Most bytes of the input's value a reference carries.
pub const REFERENCE_PREFIX: usize = 256;

/// Where dead letters go: each input's own topic (`<input>-dlq`, the
/// default), or one topic for every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTopics {
    /// `<input>-dlq` for each input topic.
    PerInput,
    /// This topic for every input.
    One(String),
}

impl DeadLetterTopics {
    /// The dead-letter topic of records read from `input`.
    pub fn of<'a>(&'a self, input: &str) -> Cow<'a, str> {
        match self {
            DeadLetterTopics::PerInput => Cow::Owned(format!(
                "{input}{}",
                crate::source::inputs::DEAD_LETTER_SUFFIX
            )),
            DeadLetterTopics::One(t) => Cow::Borrowed(t),
        }
    }
}

/// `<input>-dlq` or the topic, for logs.
impl std::fmt::Display for DeadLetterTopics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterTopics::PerInput => {
                write!(f, "<input>{}", crate::source::inputs::DEAD_LETTER_SUFFIX)
            }
            DeadLetterTopics::One(t) => f.write_str(t),
        }
    }
}

/// True for the headers a dead letter gets from the pipeline
/// (`pipeline.error.*`, `pipeline.source.*`), which re-driving removes.
pub fn is_pipeline_header(name: &[u8]) -> bool {
    name.starts_with(b"pipeline.error.") || name.starts_with(b"pipeline.source.")
}

/// The dead-letter record for input `src` failed as `dead`.
pub fn record(src: &RecordAndOffset, dead: &DeadLetter, topic: &str, partition: i32) -> Record {
    let mut record = src.record.clone();
    // The input's own headers stay as they were, in order, repeats and all;
    // only an earlier pipeline's copies of the headers written here go.
    record.headers.retain(|k, _| !is_pipeline_header(k));
    record.headers.push(ERROR_STAGE, dead.stage.as_bytes());
    record.headers.push(ERROR_REASON, dead.reason.as_bytes());
    record
        .headers
        .extend(super::source_headers(topic, partition, src.offset));
    record
}

/// The reference written instead of the dead letter of `src` (failed as
/// `dead`) when the dead-letter topic refused it with `refusal`.
pub fn reference(
    src: &RecordAndOffset,
    dead: &DeadLetter,
    topic: &str,
    partition: i32,
    refusal: &str,
) -> Record {
    let value = src.record.value.as_deref().unwrap_or_default();
    let prefix = &value[..value.len().min(REFERENCE_PREFIX)];
    let key = src.record.key.as_deref();
    let body = serde_json::json!({
        "reference": true,
        "topic": topic,
        "partition": partition,
        "offset": src.offset,
        "key_bytes": key.map(<[u8]>::len),
        "value_bytes": src.record.value.as_ref().map(Vec::len),
        "header_bytes": src.record.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
        "stage": dead.stage,
        "reason": dead.reason,
        "refused": refusal,
        "value_prefix": String::from_utf8_lossy(prefix),
    });
    let mut headers = rskafka::record::Headers::default();
    headers.push(ERROR_STAGE, dead.stage.as_bytes());
    headers.push(ERROR_REASON, dead.reason.as_bytes());
    headers.push(REFERENCE, b"true");
    headers.extend(super::source_headers(topic, partition, src.offset));
    Record {
        // A small key keeps the reference on the dead letter's partition.
        key: key
            .filter(|k| k.len() <= REFERENCE_PREFIX)
            .map(<[u8]>::to_vec),
        value: Some(body.to_string().into_bytes()),
        headers,
        timestamp: src.record.timestamp,
    }
}
