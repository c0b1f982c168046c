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

/// The dead-letter record for input `src` failed as `dead`.
pub fn record(src: &RecordAndOffset, dead: &DeadLetter, topic: &str, partition: i32) -> Record {
    let mut record = src.record.clone();
    record
        .headers
        .insert(ERROR_STAGE.into(), dead.stage.as_bytes().to_vec());
    record
        .headers
        .insert(ERROR_REASON.into(), dead.reason.as_bytes().to_vec());
    record
        .headers
        .extend(super::source_headers(topic, partition, src.offset));
    record
}
