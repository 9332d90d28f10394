//! The scoring kernel of `vector_search`: blocked dot products of query vectors against the rows of
//! a contiguous row-major matrix, fed into a partial top-k selection per query.
//!
//! No BLAS: the inner loops work on fixed-size chunks with several independent accumulators, so
//! LLVM vectorises them with whatever SIMD width the build targets (SSE2 on a default x86-64 build),
//! and each chunk of an index row is loaded once for [`QUERY_GROUP`] queries. Index rows are taken
//! in blocks of [`ROW_BLOCK`] so a block stays in cache while every query of the batch visits it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Floats per accumulator chunk.
const LANES: usize = 8;

/// Queries scored together against each index row.
pub const QUERY_GROUP: usize = 4;

/// Index rows per cache block (256 rows of dim 384 are 384 KiB).
pub const ROW_BLOCK: usize = 256;

/// The dot product of `a` and `b` (of equal length).
#[allow(clippy::needless_range_loop)] // indexed lanes of fixed-size arrays vectorise best
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    let (pa, oa) = ca.as_chunks::<2>();
    let (pb, ob) = cb.as_chunks::<2>();
    let mut acc0 = [0f32; LANES];
    let mut acc1 = [0f32; LANES];
    for (x, y) in pa.iter().zip(pb) {
        for l in 0..LANES {
            acc0[l] += x[0][l] * y[0][l];
            acc1[l] += x[1][l] * y[1][l];
        }
    }
    for (x, y) in oa.iter().zip(ob) {
        for l in 0..LANES {
            acc0[l] += x[l] * y[l];
        }
    }
    let mut sum: f32 = acc0.iter().zip(&acc1).map(|(p, q)| p + q).sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Dot products of four queries with one row (all of equal length).
#[allow(clippy::needless_range_loop)] // indexed lanes of fixed-size arrays vectorise best
fn dot4(q: [&[f32]; QUERY_GROUP], row: &[f32]) -> [f32; QUERY_GROUP] {
    let (cr, rr) = row.as_chunks::<LANES>();
    let (c0, r0) = q[0].as_chunks::<LANES>();
    let (c1, r1) = q[1].as_chunks::<LANES>();
    let (c2, r2) = q[2].as_chunks::<LANES>();
    let (c3, r3) = q[3].as_chunks::<LANES>();
    let mut a0 = [0f32; LANES];
    let mut a1 = [0f32; LANES];
    let mut a2 = [0f32; LANES];
    let mut a3 = [0f32; LANES];
    for ((((r, x0), x1), x2), x3) in cr.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        for l in 0..LANES {
            a0[l] += x0[l] * r[l];
            a1[l] += x1[l] * r[l];
            a2[l] += x2[l] * r[l];
            a3[l] += x3[l] * r[l];
        }
    }
    let tail = |rq: &[f32]| rq.iter().zip(rr).map(|(x, y)| x * y).sum::<f32>();
    [
        a0.iter().sum::<f32>() + tail(r0),
        a1.iter().sum::<f32>() + tail(r1),
        a2.iter().sum::<f32>() + tail(r2),
        a3.iter().sum::<f32>() + tail(r3),
    ]
}

/// A scored index row. Ordered so that the *worse* candidate is greater (lower score, then higher
/// row on ties), which makes a [`BinaryHeap`] of them a heap of the worst kept candidate.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// The similarity (higher is closer).
    pub score: f32,
    /// The index row.
    pub row: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.row.cmp(&other.row))
    }
}

/// The best `k` candidates seen so far.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Candidate>,
    /// The worst kept score once `k` are kept (a row that does not beat it is skipped).
    floor: f32,
}

impl TopK {
    /// Keeps at most `k` candidates.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
            floor: f32::NEG_INFINITY,
        }
    }

    /// Offers a candidate. Rows must be offered in ascending order: on equal scores the earlier row
    /// wins.
    #[inline]
    pub fn offer(&mut self, score: f32, row: u32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Candidate { score, row });
            if self.heap.len() == self.k {
                self.floor = self.heap.peek().map_or(f32::NEG_INFINITY, |c| c.score);
            }
        } else if score.total_cmp(&self.floor) == Ordering::Greater {
            if let Some(mut worst) = self.heap.peek_mut() {
                *worst = Candidate { score, row };
            }
            self.floor = self.heap.peek().map_or(f32::NEG_INFINITY, |c| c.score);
        }
    }

    /// The kept candidates, best first.
    pub fn into_sorted(self) -> Vec<Candidate> {
        self.heap.into_sorted_vec()
    }
}

/// Scores every query against every row of `matrix` (`rows × dim`, row-major) and returns each
/// query's best `k` rows, best first.
pub fn search(queries: &[&[f32]], matrix: &[f32], dim: usize, k: usize) -> Vec<Vec<Candidate>> {
    let mut tops: Vec<TopK> = queries.iter().map(|_| TopK::new(k)).collect();
    if dim == 0 || queries.is_empty() {
        return tops.into_iter().map(TopK::into_sorted).collect();
    }
    for (block_no, block) in matrix.chunks(ROW_BLOCK * dim).enumerate() {
        let first = block_no * ROW_BLOCK;
        let mut q = 0;
        while q + QUERY_GROUP <= queries.len() {
            let group = [queries[q], queries[q + 1], queries[q + 2], queries[q + 3]];
            for (r, row) in block.chunks_exact(dim).enumerate() {
                let scores = dot4(group, row);
                let row_id = (first + r) as u32;
                for (t, s) in tops[q..q + QUERY_GROUP].iter_mut().zip(scores) {
                    t.offer(s, row_id);
                }
            }
            q += QUERY_GROUP;
        }
        for (query, top) in queries[q..].iter().zip(&mut tops[q..]) {
            for (r, row) in block.chunks_exact(dim).enumerate() {
                top.offer(dot(query, row), (first + r) as u32);
            }
        }
    }
    tops.into_iter().map(TopK::into_sorted).collect()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        for n in [0, 1, 7, 8, 9, 16, 17, 33, 384, 385] {
            let a = pseudo(n, 1);
            let b = pseudo(n, 2);
            assert!((dot(&a, &b) - naive(&a, &b)).abs() < 1e-3, "n={n}");
            let q = [a.as_slice(), b.as_slice(), a.as_slice(), b.as_slice()];
            let four = dot4(q, &b);
            assert!((four[1] - naive(&b, &b)).abs() < 1e-3, "n={n}");
            assert!((four[2] - naive(&a, &b)).abs() < 1e-3, "n={n}");
        }
    }

    #[test]
    fn search_matches_a_full_sort() {
        let dim = 13;
        let rows = 3 * ROW_BLOCK + 5;
        let matrix = pseudo(rows * dim, 7);
        let qs: Vec<Vec<f32>> = (0..7).map(|i| pseudo(dim, 100 + i)).collect();
        let refs: Vec<&[f32]> = qs.iter().map(Vec::as_slice).collect();
        let got = search(&refs, &matrix, dim, 10);
        for (q, top) in qs.iter().zip(&got) {
            let mut all: Vec<(f32, u32)> = matrix
                .chunks_exact(dim)
                .enumerate()
                .map(|(r, row)| (naive(q, row), r as u32))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let want: Vec<u32> = all[..10].iter().map(|c| c.1).collect();
            let have: Vec<u32> = top.iter().map(|c| c.row).collect();
            assert_eq!(have, want);
        }
    }

    #[test]
    fn ties_prefer_the_earlier_row_and_k_can_exceed_rows() {
        let matrix = vec![1.0, 1.0, 1.0, 2.0];
        let q = [1.0f32];
        let got = search(&[&q], &matrix, 1, 10);
        let rows: Vec<u32> = got[0].iter().map(|c| c.row).collect();
        assert_eq!(rows, [3, 0, 1, 2]);
        let got = search(&[&q], &matrix, 1, 2);
        let rows: Vec<u32> = got[0].iter().map(|c| c.row).collect();
        assert_eq!(rows, [3, 0]);
    }
}
