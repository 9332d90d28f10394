//! Every step kind weir ships, registered in one list ([`builtin`]), and the YAML front end's
//! routing steps (`key_by`, `rebalance`, `broadcast`), which are not kinds of nodes but the routing
//! of the edges out of the step before them.
//!
//! Adding a kind is one line here plus its spec type (a [`weir_runtime::kind::SourceSpec`],
//! [`OperatorSpec`](weir_runtime::kind::OperatorSpec) or
//! [`SinkSpec`](weir_runtime::kind::SinkSpec)) in its own crate's module.
//!
//! Paths inside specs (models, tokenizers, label files, vector indexes, inputs and outputs) are
//! used as written: relative ones resolve against the working directory of `weir`, not against
//! the spec file. Specs that ship with weir therefore use `${WEIR_MODELS}` / `${WEIR_DATA}`.

use serde::{Deserialize, Serialize};
use weir_connectors as conn;
use weir_infer as infer;
use weir_media as media;
use weir_ops as ops;
use weir_runtime::kind::Registry;

/// Every kind of source, operator and sink weir ships, in the order error messages list them.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    r.source::<conn::ParquetSourceSpec>("parquet")
        .source::<conn::JsonlSourceSpec>("jsonl")
        .source::<conn::CsvSourceSpec>("csv")
        .source::<conn::FilesSourceSpec>("files")
        .source::<conn::TextSourceSpec>("text")
        .source::<conn::ValuesSourceSpec>("values")
        .source::<weir_datagen::DatagenSourceSpec>("datagen")
        .source::<weir_datagen::NexmarkSourceSpec>("nexmark")
        .op::<ops::FilterSpec>("filter")
        .op::<ops::SelectSpec>("select")
        .op::<ops::RenameSpec>("rename")
        .op::<ops::WithColumnSpec>("with_column")
        .op::<ops::UnionSpec>("union")
        .op::<ops::LimitSpec>("limit")
        .op::<ops::ThrottleSpec>("throttle")
        .op::<weir_stream::AggregateSpec>("aggregate")
        .op::<weir_stream::TopNSpec>("top_n")
        .op::<weir_stream::IntervalJoinSpec>("interval_join")
        .op::<weir_stream::JoinSpec>("join")
        .op::<weir_stream::WindowJoinSpec>("window_join")
        .op::<weir_stream::LookupJoinSpec>("lookup_join")
        .op::<media::FetchSpec>("fetch")
        .op::<media::DecodeImageSpec>("decode_image")
        .op::<media::FusedDecodeSpec>("decode_image_fused")
        .op::<media::ResizeSpec>("resize")
        .op::<media::CenterCropSpec>("center_crop")
        .op::<media::ToTensorSpec>("to_tensor")
        .op::<media::DecodeAudioSpec>("decode_audio")
        .op::<infer::InferSpec>("infer")
        .op::<infer::TopKSpec>("top_k")
        .op::<infer::L2NormalizeSpec>("l2_normalize")
        .op::<infer::MeanPoolSpec>("mean_pool")
        .op::<infer::VadSpec>("vad");
    // The registry lists kinds in registration order (error messages, `weir explain`).
    #[cfg(feature = "text")]
    r.op::<weir_text::TokenizeSpec>("tokenize");
    r.op::<weir_vector::VectorSearchSpec>("vector_search")
        .sink::<conn::ParquetSinkSpec>("parquet")
        .sink::<conn::JsonlSinkSpec>("jsonl")
        .sink::<conn::ConsoleSinkSpec>("console")
        .sink::<conn::BlackholeSinkSpec>("blackhole");
    #[cfg(feature = "kafka")]
    r.source::<weir_kafka::KafkaSourceSpec>("kafka")
        .sink::<weir_kafka::KafkaSinkSpec>("kafka");
    r
}

/// The YAML front end's routing steps (`op: NAME`): they set how rows travel to the next step.
pub const ROUTING: [&str; 3] = ["key_by", "rebalance", "broadcast"];

/// Options of `op: key_by`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBySpec {
    /// Key columns; rows with equal keys go to the same instance of the next step.
    pub keys: Vec<String>,
}

/// A routing step without options (`rebalance`, `broadcast`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::kind::Role;

    #[test]
    fn every_kind_is_registered_once_and_routing_names_are_not_kinds() {
        let r = builtin();
        let mut sources = vec![
            "parquet", "jsonl", "csv", "files", "text", "values", "datagen", "nexmark",
        ];
        let mut sinks = vec!["parquet", "jsonl", "console", "blackhole"];
        if cfg!(feature = "kafka") {
            sources.push("kafka");
            sinks.push("kafka");
        }
        assert_eq!(r.names(Role::Source), sources);
        assert_eq!(r.names(Role::Sink), sinks);
        for name in ROUTING {
            assert!(r.get(Role::Op, name).is_none(), "{name}");
        }
        // `op: tokenize` comes with the `text` feature (on by default).
        assert_eq!(
            r.get(Role::Op, "tokenize").is_some(),
            cfg!(feature = "text")
        );
        assert_eq!(
            r.unknown(Role::Op, "filtr", &ROUTING),
            format!(
                "unknown op kind 'filtr', expected one of: {}, key_by, rebalance, broadcast; did you mean 'filter'?",
                r.names(Role::Op).join(", ")
            )
        );
    }
}
