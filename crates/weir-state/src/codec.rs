//! The bytes of one piece of keyed state in a checkpoint: a named Arrow batch.
//!
//! Every keyed entry of a [`weir_checkpoint::StateSnapshot`] written by weir's stateful operators
//! is one *part*: the name of the state it belongs to and one Arrow record batch (the rows of that
//! state in one key group), as an Arrow IPC stream, so state stays columnar from memory to store
//! and back, and other Arrow tools can read a state file's parts.
//!
//! ```text
//! magic   4 bytes  "WSP1"
//! name    u16 length (little-endian), then that many bytes of UTF-8
//! batch   an Arrow IPC stream holding one schema and one record batch
//! ```

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use weir_types::{Error, ErrorKind, Result};

const MAGIC: &[u8; 4] = b"WSP1";

/// Encodes `batch` as a part named `name`.
pub fn encode_part(name: &str, batch: &RecordBatch) -> Result<Vec<u8>> {
    let name_len = u16::try_from(name.len())
        .map_err(|_| Error::internal(format!("state name '{name}' is too long")))?;
    let mut out = Vec::with_capacity(8 + name.len() + batch.get_array_memory_size());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    let mut w = StreamWriter::try_new(&mut out, batch.schema_ref())
        .map_err(|e| Error::internal(format!("cannot encode state '{name}'")).with_source(e))?;
    w.write(batch)
        .and_then(|_| w.finish())
        .map_err(|e| Error::internal(format!("cannot encode state '{name}'")).with_source(e))?;
    drop(w);
    Ok(out)
}

/// The name of the part in `bytes` (without decoding its batch).
pub fn part_name(bytes: &[u8]) -> Result<&str> {
    if bytes.len() < 6 || &bytes[..4] != MAGIC {
        return Err(corrupt("a keyed state entry does not start with WSP1"));
    }
    let len = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
    let name = bytes
        .get(6..6 + len)
        .ok_or_else(|| corrupt("a keyed state entry ends inside its name"))?;
    std::str::from_utf8(name).map_err(|_| corrupt("a keyed state entry's name is not UTF-8"))
}

/// Decodes a part written by [`encode_part`]: its name and batch.
pub fn decode_part(bytes: &[u8]) -> Result<(&str, RecordBatch)> {
    let name = part_name(bytes)?;
    let body = &bytes[6 + name.len()..];
    let mut reader = StreamReader::try_new(body, None)
        .map_err(|e| corrupt(format!("state '{name}' is not an Arrow stream")).with_source(e))?;
    let batch = reader
        .next()
        .ok_or_else(|| corrupt(format!("state '{name}' holds no batch")))?
        .map_err(|e| corrupt(format!("state '{name}' cannot be read")).with_source(e))?;
    Ok((name, batch))
}

fn corrupt(why: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("checkpoint state is corrupt: {}", why.into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    #[test]
    fn parts_round_trip_and_damage_is_an_error() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let batch = RecordBatch::try_from_iter([("a", a)]).expect("batch");
        let bytes = encode_part("counts", &batch).expect("encode");
        let (name, back) = decode_part(&bytes).expect("decode");
        assert_eq!(name, "counts");
        assert_eq!(back, batch);
        assert!(decode_part(&bytes[..bytes.len() / 2]).is_err());
        assert!(decode_part(b"WSP").is_err());
        let e = decode_part(b"XXXX\x01\x00a").expect_err("magic");
        assert!(e.message().contains("WSP1"), "{e}");
    }
}
