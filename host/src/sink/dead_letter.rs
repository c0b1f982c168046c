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

use rskafka::record::{Record, RecordAndOffset};

use crate::stages::DeadLetter;

/// Header naming the stage that failed a record.
pub const ERROR_STAGE: &str = "pipeline.error.stage";
/// Header with the failure reason.
pub const ERROR_REASON: &str = "pipeline.error.reason";

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
