//! weir's text operators. For now one: [`tokenize`], which turns a string column into the
//! `input_ids` / `attention_mask` / `token_type_ids` columns a transformer model takes, with a
//! Hugging Face `tokenizer.json` loaded offline.
//!
//! Like every weir operator, the spec ([`TokenizeSpec`]) offers the three calls the planner uses:
//! `output_schema` (plan-time checks, including loading the tokenizer file once), `create` (one
//! running instance per parallel subtask) and `describe` (one line for `weir validate`).

#![warn(missing_docs)]

pub mod tokenize;

pub use tokenize::{EmptyText, Padding, Tokenize, TokenizeOutputs, TokenizeSpec, Truncation};
