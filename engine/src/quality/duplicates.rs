//! Duplicate detection over the catalogue, in three strengths:
//!
//! - **Exact**: byte-identical images (same content hash).
//! - **Perceptual**: the same picture resized, re-encoded or slightly recoloured: perceptual
//!   hashes (see [`super::phash`]) at most `phash_max_distance` bits apart, **and** the vector
//!   space agreeing (one of the two is among the other's `k` nearest neighbours). Items without
//!   a vector are judged by their hashes alone.
//! - **Near**: items whose vectors are close (cosine similarity ≥ `threshold`), one among the
//!   other's `k` nearest neighbours: crops, mirror images, copies the hash misses. Candidates come from the vector index's k nearest neighbours, never from all
//!   pairs.
//!
//! **Hashes and vectors nominate, the evidence decides.** Among flat icons, product variants
//! or renders in several colours, a 64-bit pHash or a cosine cutoff joins *different* pictures
//! by the hundred. So every nominated pair is verified before it may be grouped (see
//! [`super::evidence`]): its texts must agree when both items have text, and its colour
//! thumbnails must match under some crop, rescale or mirror image. What was measured on each
//! reported pair travels with it ([`DuplicatePair::evidence`]). Asking that a link also be a
//! nearest-neighbour relation keeps the number of pairs to verify proportional to the
//! catalogue.
//!
//! **Groups are complete-linkage.** Links are merged strongest first, and two groups merge only
//! when *every* pair across them is linked, so A≈B and B≈C never put A and C together unless
//! A≈C. This is what stops chaining (a random walk of small steps, a dense region of
//! look-alikes) from growing one giant group; merges refused this way are counted in
//! [`DuplicateReport::refused_merges`]. Groups found by a stronger kind are indivisible in the
//! weaker ones (a link to any member counts as a link to the whole copy set), so an item sits in
//! at most one group of each kind and each kind's groups contain the stronger kinds' groups.
//! Exact groups are never split: byte-identical items do not chain.
//!
//! One file, past 600 lines: exact, perceptual and vector links, the hash multi-index and the
//! complete-linkage grouping feed one grouping pass.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::evidence::{Checked, CopyEvidence, Verifier};
use super::phash::hamming;
use super::thumbnail::Thumbnail;
use super::union_find::UnionFind;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// What duplicate detection needs to know about one item.
#[derive(Debug, Clone, PartialEq)]
pub struct DupItem {
    /// The item's key in the store (also its id in the vector index).
    pub key: u64,
    /// SHA-256 of the image bytes.
    pub content_hash: [u8; 32],
    /// Perceptual hash of the image ([`super::phash::phash`]), if one was computed.
    pub phash: Option<u64>,
    /// The image's colour thumbnail, for the pixel check; without one only texts, hashes and
    /// vectors decide.
    pub thumbnail: Option<Thumbnail>,
    /// The item's texts (title, description), folded by [`super::evidence::fold_text`], for
    /// the text check: fields compare by position, `None` is a missing field.
    pub texts: Vec<Option<String>>,
}

/// How strongly the members of a group resemble each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateKind {
    /// Byte-identical images.
    Exact,
    /// Perceptual hashes within `phash_max_distance` bits, one item among the other's `k`
    /// nearest neighbours (or either item without a vector).
    Perceptual,
    /// One among the other's `k` nearest neighbours with cosine similarity at or above `threshold`,
    /// texts and pixels agreeing.
    Near,
    /// The same thing listed twice with other photos: nearest neighbours in a space that reads
    /// the texts (fused or text) whose texts agree ([`DuplicateOptions::relistings`]).
    Relisting,
}

/// Items found to be copies of each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicateGroup {
    pub kind: DuplicateKind,
    /// Item keys, ascending.
    pub members: Vec<u64>,
    /// The links found inside the group, strongest first. Every pair of members is linked,
    /// directly or through copies of a stronger kind.
    pub pairs: Vec<DuplicatePair>,
}

/// One link inside a group, with what was measured on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicatePair {
    /// The smaller key.
    pub a: u64,
    pub b: u64,
    /// What links are ranked by: 1 for exact copies, `1 − hamming/64` for perceptual ones,
    /// the cosine similarity for near ones.
    pub score: f32,
    #[serde(flatten)]
    pub evidence: CopyEvidence,
}

/// Everything [`find_duplicates`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DuplicateReport {
    /// Exact groups first, then perceptual, then near; within a kind, largest first.
    pub groups: Vec<DuplicateGroup>,
    /// Perceptual or near merges refused because some pair across the two groups was not
    /// linked (complete linkage) or the group would have outgrown `max_group_size`: many of
    /// them mean a region of look-alikes that single-linkage grouping would have chained.
    pub refused_merges: usize,
}

/// Knobs of [`find_duplicates`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicateOptions {
    /// Cosine similarity at or above which a nearest neighbour is a near-duplicate candidate.
    pub threshold: f32,
    /// Largest Hamming distance between perceptual hashes of copies (imagededup's PHash
    /// default is 10 of 64 bits).
    pub phash_max_distance: u32,
    /// Neighbours asked of the vector index per item: the neighbourhood that perceptual links
    /// must agree with and near links are drawn from. 0 skips the vector space (near
    /// duplicates are not searched, perceptual links rest on the hashes alone).
    pub k: usize,
    /// Largest perceptual or near group a merge may create; complete linkage keeps groups
    /// small already, this bounds the work on pathological input.
    pub max_group_size: usize,
    /// Largest share of pixels of another colour two thumbnails may show under their best
    /// alignment and still be copies (see [`super::evidence`]); 1 turns the pixel check off.
    pub max_pixel_difference: f32,
    /// Smallest character similarity (0–1) of two items' texts, field by field where both
    /// have one, for them to be copies; 0 turns the text check off.
    pub min_text_similarity: f32,
    /// Near links are re-listings rather than copies: both items must have text, and it must
    /// agree, while their pictures may differ (the pixel check is skipped for them). Set by the
    /// catalogue when the space reads the texts.
    pub relistings: bool,
}

impl Default for DuplicateOptions {
    fn default() -> Self {
        // Chosen on a validation planting of the demo catalogue (lab/scripts/dup_eval.sh with
        // offset 25), never on the reported one; see BENCHMARKS.md.
        Self {
            threshold: 0.7,
            phash_max_distance: 10,
            k: 10,
            max_group_size: 50,
            max_pixel_difference: 0.1,
            min_text_similarity: 1.0,
            relistings: false,
        }
    }
}

/// Finds exact, perceptual and near duplicates among `items`.
///
/// `knn(key, k)` returns up to `k` neighbours of the item `key` as `(key, cosine
/// similarity)`; it is asked for `k + 1` so the item itself may be among the answers, and an
/// item without a vector answers nothing. Neighbours that are not in `items` are ignored. It
/// is called from several threads at once, one call per item: cost is `items.len()` index
/// searches plus near-linear work.
pub fn find_duplicates(
    items: &[DupItem],
    knn: &(dyn Fn(u64, usize) -> Vec<(u64, f32)> + Sync),
    opts: &DuplicateOptions,
    progress: &dyn Progress,
) -> Result<DuplicateReport> {
    validate(opts)?;
    let mut index_of: HashMap<u64, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if index_of.insert(item.key, i).is_some() {
            return Err(Error::InvalidItem {
                what: "duplicate detection".into(),
                index: i,
                reason: format!("key {} appears twice", item.key),
            });
        }
    }

    let mut groups = Vec::new();
    let mut refused_merges = 0;
    // Items already known to be copies of each other: weaker kinds treat each such set as one.
    let mut explained = UnionFind::new(items.len());

    let exact = exact_groups(items);
    for members in &exact {
        for &m in &members[1..] {
            explained.union(members[0], m);
        }
    }
    groups.extend(exact.into_iter().map(|members| {
        DuplicateGroup {
            kind: DuplicateKind::Exact,
            pairs: members[1..]
                .iter()
                .map(|&m| {
                    pair(
                        items[members[0]].key,
                        items[m].key,
                        1.0,
                        CopyEvidence::default(),
                    )
                })
                .collect(),
            members: members.iter().map(|&m| items[m].key).collect(),
        }
    }));

    let neighbours = if opts.k > 0 {
        progress.start("duplicates: nearest neighbours", Some(items.len() as u64));
        let lists = neighbour_lists(items, &index_of, knn, opts.k, progress);
        progress.finish();
        lists
    } else {
        Neighbours::none(items.len())
    };

    let checked: Vec<Checked<'_>> = items
        .iter()
        .map(|i| Checked {
            texts: &i.texts,
            thumbnail: i.thumbnail.as_ref(),
        })
        .collect();
    let verifier = Verifier {
        items: &checked,
        max_pixel_difference: opts.max_pixel_difference,
        min_text_similarity: opts.min_text_similarity,
        relisting: false,
    };
    let near_verifier = Verifier {
        relisting: opts.relistings,
        ..verifier
    };
    let apart = |a: usize, b: usize| verifier.texts_conflict(a, b);
    progress.start("duplicates: perceptual hashes", Some(items.len() as u64));
    let links = perceptual_links(items, &neighbours, opts.phash_max_distance);
    // A perceptual hash does not survive a mirror image, so neither does its pixel check.
    let (links, evidence) = verified(links, &verifier, false, |a, b, e| CopyEvidence {
        hash_distance: items[a]
            .phash
            .zip(items[b].phash)
            .map(|(x, y)| hamming(x, y)),
        similarity: neighbours.pair_similarity(a, b),
        ..e
    });
    progress.finish();
    // Items without a vector were linked to one representative per hash (see
    // `hash_only_links`), so their other pairs are judged here when grouping asks.
    let hash_only_verdicts = std::cell::RefCell::new(HashMap::new());
    let perceptually_linked = |a: usize, b: usize| {
        let pair = (a.min(b), a.max(b));
        if evidence.contains_key(&pair) {
            return true;
        }
        let by_hash_alone = !neighbours.has_vector(a) || !neighbours.has_vector(b);
        let close = match (items[a].phash, items[b].phash) {
            (Some(x), Some(y)) => hamming(x, y) <= opts.phash_max_distance,
            _ => false,
        };
        by_hash_alone
            && close
            && *hash_only_verdicts
                .borrow_mut()
                .entry(pair)
                .or_insert_with(|| verifier.check(pair.0, pair.1, false).is_some())
    };
    let (perceptual, refused) = complete_linkage_groups(
        &explained,
        links,
        &evidence,
        &perceptually_linked,
        &apart,
        opts.max_group_size,
    );
    refused_merges += refused;
    for group in &perceptual {
        for &(a, b, _) in &group.links {
            explained.union(a, b);
        }
    }
    groups.extend(
        perceptual
            .into_iter()
            .map(|g| g.into_group(items, DuplicateKind::Perceptual, &evidence)),
    );

    if opts.k > 0 {
        let near_kind = if opts.relistings {
            DuplicateKind::Relisting
        } else {
            DuplicateKind::Near
        };
        let links = neighbours.neighbour_links(opts.threshold);
        let (links, near_evidence) =
            verified(links, &near_verifier, true, |a, b, e| CopyEvidence {
                hash_distance: items[a]
                    .phash
                    .zip(items[b].phash)
                    .map(|(x, y)| hamming(x, y)),
                similarity: neighbours.pair_similarity(a, b),
                ..e
            });
        let near_linked = |a: usize, b: usize| near_evidence.contains_key(&(a.min(b), a.max(b)));
        let (near, refused) = complete_linkage_groups(
            &explained,
            links,
            &near_evidence,
            &near_linked,
            &apart,
            opts.max_group_size,
        );
        refused_merges += refused;
        groups.extend(
            near.into_iter()
                .map(|g| g.into_group(items, near_kind, &near_evidence)),
        );
    }

    groups.sort_by(|a, b| {
        (a.kind, std::cmp::Reverse(a.members.len()), a.members[0]).cmp(&(
            b.kind,
            std::cmp::Reverse(b.members.len()),
            b.members[0],
        ))
    });
    Ok(DuplicateReport {
        groups,
        refused_merges,
    })
}

fn validate(opts: &DuplicateOptions) -> Result<()> {
    if !(opts.threshold.is_finite() && (-1.0..=1.0).contains(&opts.threshold)) {
        return Err(Error::InvalidArgument(format!(
            "duplicate threshold must be a cosine similarity in [-1, 1], got {}",
            opts.threshold
        )));
    }
    if !(0.0..=1.0).contains(&opts.max_pixel_difference) {
        return Err(Error::InvalidArgument(format!(
            "max_pixel_difference must be a share in [0, 1], got {}",
            opts.max_pixel_difference
        )));
    }
    if !(0.0..=1.0).contains(&opts.min_text_similarity) {
        return Err(Error::InvalidArgument(format!(
            "min_text_similarity must be a share in [0, 1], got {}",
            opts.min_text_similarity
        )));
    }
    if opts.max_group_size < 2 {
        return Err(Error::InvalidArgument(format!(
            "max_group_size must be at least 2, got {}",
            opts.max_group_size
        )));
    }
    Ok(())
}

/// Index groups (≥ 2 members, ascending) of items with equal content hashes.
fn exact_groups(items: &[DupItem]) -> Vec<Vec<usize>> {
    let mut by_hash: HashMap<&[u8; 32], Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        by_hash.entry(&item.content_hash).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_hash.into_values().filter(|g| g.len() > 1).collect();
    groups.sort_unstable_by_key(|g| g[0]);
    groups
}

/// A link between items `a` and `b` (indices), with its score (higher = more alike).
type Link = (usize, usize, f32);

/// What was measured on each verified link, keyed by `(a, b)` with `a < b`.
type EvidenceMap = HashMap<(usize, usize), CopyEvidence>;

/// The links whose pair passes the verifier's text and pixel checks (run in parallel, each
/// pair once), with their evidence completed by `measure`.
fn verified(
    links: Vec<Link>,
    verifier: &Verifier<'_>,
    allow_mirror: bool,
    measure: impl Fn(usize, usize, CopyEvidence) -> CopyEvidence + Sync,
) -> (Vec<Link>, EvidenceMap) {
    let checked: Vec<(Link, CopyEvidence)> = links
        .into_par_iter()
        .filter_map(|link| {
            let (a, b) = (link.0.min(link.1), link.0.max(link.1));
            let e = verifier.check(a, b, allow_mirror)?;
            Some(((a, b, link.2), measure(a, b, e)))
        })
        .collect();
    let evidence = checked.iter().map(|&((a, b, _), e)| ((a, b), e)).collect();
    (checked.into_iter().map(|(l, _)| l).collect(), evidence)
}

/// Candidate links between items whose perceptual hashes are within `max_distance` bits and
/// whose vectors agree: one is among the other's nearest neighbours, or either has no vector.
///
/// Items with neighbours are matched through their neighbour lists (the agreement requires
/// one of the pair in the other's list, so nothing else can qualify): `n·k` hash comparisons.
/// Items without a vector are matched by their hashes alone, against every hash: equal hashes
/// are linked to the first of them (a star, not all pairs, so a thousand blank images make a
/// thousand links rather than half a million) and distinct ones through a multi-index hash
/// table.
fn perceptual_links(items: &[DupItem], neighbours: &Neighbours, max_distance: u32) -> Vec<Link> {
    let score = |d: u32| 1.0 - d as f32 / 64.0;
    let mut links: Vec<Link> = Vec::new();
    for (a, list) in neighbours.lists.iter().enumerate() {
        let Some(ha) = items[a].phash else { continue };
        for &(b, _) in list {
            if let Some(hb) = items[b].phash {
                let d = hamming(ha, hb);
                if d <= max_distance {
                    links.push((a.min(b), a.max(b), score(d)));
                }
            }
        }
    }
    if (0..items.len()).any(|i| !neighbours.has_vector(i) && items[i].phash.is_some()) {
        links.extend(
            hash_only_links(items, max_distance)
                .into_iter()
                .filter(|&(a, b, _)| !neighbours.has_vector(a) || !neighbours.has_vector(b)),
        );
    }
    links.sort_unstable_by_key(|l| (l.0, l.1));
    links.dedup_by_key(|l| (l.0, l.1));
    links
}

/// Links between all items whose perceptual hashes are within `max_distance` bits, by the
/// hashes alone.
fn hash_only_links(items: &[DupItem], max_distance: u32) -> Vec<Link> {
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(h) = item.phash {
            by_hash.entry(h).or_default().push(i);
        }
    }
    let mut distinct: Vec<(u64, usize)> = by_hash.iter().map(|(&h, g)| (h, g[0])).collect();
    distinct.sort_unstable_by_key(|&(_, first)| first);

    let mut links: Vec<Link> = Vec::new();
    for group in by_hash.values() {
        links.extend(group[1..].iter().map(|&m| (group[0], m, 1.0)));
    }
    let hashes: Vec<u64> = distinct.iter().map(|&(h, _)| h).collect();
    let index = MultiIndex::build(&hashes, max_distance);
    let distinct = &distinct;
    let matched: Vec<Link> = (0..hashes.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            index
                .matches_after(i, &hashes)
                .into_iter()
                .map(move |(j, d)| {
                    let (a, b) = (distinct[i].1, distinct[j].1);
                    (a.min(b), a.max(b), 1.0 - d as f32 / 64.0)
                })
        })
        .collect();
    links.extend(matched);
    links
}

/// Multi-index hashing (Norouzi, Punjani & Fleet, 2012) for Hamming-radius search: the 64
/// bits are cut into `m` bands; if two hashes differ in at most `d` bits, then by the
/// pigeonhole principle some band differs in at most `⌊d/m⌋` bits. Each band has a hash
/// table, and a query probes, in each band, every value within that smaller radius.
struct MultiIndex {
    /// `(shift, width)` of each band.
    bands: Vec<(u32, u32)>,
    /// Per band: band value → positions in the hash list, ascending.
    tables: Vec<BandTable>,
    band_radius: u32,
    max_distance: u32,
}

/// Widest band stored as a flat array indexed by band value (2^20 offsets, 4 MiB).
const MAX_DENSE_BAND_BITS: u32 = 20;

/// Band value → positions (ascending). Narrow bands use a flat array (a lookup is one index,
/// which matters: a query makes hundreds), wide ones a hash map.
enum BandTable {
    Dense {
        /// Bucket `v` is `positions[offsets[v]..offsets[v + 1]]`.
        offsets: Vec<u32>,
        positions: Vec<u32>,
    },
    Sparse(HashMap<u64, Vec<u32>>),
}

impl BandTable {
    fn build(values: impl Iterator<Item = u64> + Clone, width: u32) -> Self {
        if width <= MAX_DENSE_BAND_BITS {
            let mut offsets = vec![0u32; (1usize << width) + 1];
            for v in values.clone() {
                offsets[v as usize + 1] += 1;
            }
            for i in 1..offsets.len() {
                offsets[i] += offsets[i - 1];
            }
            let mut next = offsets.clone();
            let mut positions = vec![0u32; offsets[offsets.len() - 1] as usize];
            for (pos, v) in values.enumerate() {
                let slot = &mut next[v as usize];
                positions[*slot as usize] = pos as u32;
                *slot += 1;
            }
            BandTable::Dense { offsets, positions }
        } else {
            let mut map: HashMap<u64, Vec<u32>> = HashMap::new();
            for (pos, v) in values.enumerate() {
                map.entry(v).or_default().push(pos as u32);
            }
            BandTable::Sparse(map)
        }
    }

    fn get(&self, value: u64) -> &[u32] {
        match self {
            BandTable::Dense { offsets, positions } => {
                let v = value as usize;
                &positions[offsets[v] as usize..offsets[v + 1] as usize]
            }
            BandTable::Sparse(map) => map.get(&value).map_or(&[], Vec::as_slice),
        }
    }
}

impl MultiIndex {
    fn build(hashes: &[u64], max_distance: u32) -> Self {
        let max_distance = max_distance.min(64);
        let band_count = best_band_count(hashes.len(), max_distance);
        let bands = split_bits(band_count);
        let tables = bands
            .iter()
            .map(|&(shift, width)| {
                BandTable::build(
                    hashes.iter().map(move |&h| band_value(h, shift, width)),
                    width,
                )
            })
            .collect();
        Self {
            band_radius: max_distance / band_count,
            bands,
            tables,
            max_distance,
        }
    }

    /// Positions `j > i` whose hash is within `max_distance` of `hashes[i]`, with the
    /// distance, ascending by position.
    fn matches_after(&self, i: usize, hashes: &[u64]) -> Vec<(usize, u32)> {
        let query = hashes[i];
        let mut candidates: Vec<u32> = Vec::new();
        for (table, &(shift, width)) in self.tables.iter().zip(&self.bands) {
            let value = band_value(query, shift, width);
            visit_within(value, width, self.band_radius, 0, &mut |probe| {
                let positions = table.get(probe);
                let after = positions.partition_point(|&p| p as usize <= i);
                candidates.extend_from_slice(&positions[after..]);
            });
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|j| {
                let d = hamming(query, hashes[j as usize]);
                (d <= self.max_distance).then_some((j as usize, d))
            })
            .collect()
    }
}

/// Chooses how many bands minimise the expected work of a query: probes per band grow
/// with the band radius, bucket sizes shrink with the band width.
fn best_band_count(n: usize, max_distance: u32) -> u32 {
    let cost = |m: u32| {
        let widest = 64_u32.div_ceil(m);
        let narrowest = 64 / m;
        let probes = ball_volume(widest, max_distance / m);
        m as f64 * probes * (1.0 + n as f64 / 2f64.powi(narrowest as i32))
    };
    (1..=(max_distance + 1).min(64))
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        .unwrap_or(1)
}

/// Number of `bits`-bit values within Hamming distance `radius` of a given one.
fn ball_volume(bits: u32, radius: u32) -> f64 {
    let mut total = 0.0;
    let mut choose = 1.0;
    for r in 0..=radius.min(bits) {
        if r > 0 {
            choose = choose * (bits - r + 1) as f64 / r as f64;
        }
        total += choose;
    }
    total
}

/// `(shift, width)` of `m` bands covering 64 bits, widths differing by at most one.
fn split_bits(m: u32) -> Vec<(u32, u32)> {
    let (base, extra) = (64 / m, 64 % m);
    let mut shift = 0;
    (0..m)
        .map(|b| {
            let width = base + u32::from(b < extra);
            let band = (shift, width);
            shift += width;
            band
        })
        .collect()
}

fn band_value(hash: u64, shift: u32, width: u32) -> u64 {
    if width >= 64 {
        hash
    } else {
        (hash >> shift) & ((1u64 << width) - 1)
    }
}

/// Calls `f` once for every `width`-bit value within `radius` flipped bits of `value`,
/// flipping only positions from `start` on (so each value is produced once).
fn visit_within(value: u64, width: u32, radius: u32, start: u32, f: &mut impl FnMut(u64)) {
    f(value);
    if radius == 0 {
        return;
    }
    for pos in start..width {
        visit_within(value ^ (1u64 << pos), width, radius - 1, pos + 1, f);
    }
}

/// Every item's `k` nearest neighbours (indices into the items, itself left out), nearest
/// first: the neighbourhood that perceptual and near links are judged against.
struct Neighbours {
    lists: Vec<Vec<(usize, f32)>>,
}

impl Neighbours {
    fn none(n: usize) -> Self {
        Self {
            lists: vec![Vec::new(); n],
        }
    }

    /// Whether the vector index knows the item (an item without a vector has no neighbours).
    fn has_vector(&self, i: usize) -> bool {
        !self.lists[i].is_empty()
    }

    /// Similarity of `b` as one of `a`'s nearest neighbours, if it is one.
    fn similarity(&self, a: usize, b: usize) -> Option<f32> {
        self.lists[a]
            .iter()
            .find(|&&(j, _)| j == b)
            .map(|&(_, s)| s)
    }

    /// Similarity of a pair where one is among the other's nearest neighbours (the larger of
    /// the two directions).
    fn pair_similarity(&self, a: usize, b: usize) -> Option<f32> {
        match (self.similarity(a, b), self.similarity(b, a)) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        }
    }

    /// One link per pair where one item is among the other's nearest neighbours with
    /// similarity at or above `threshold`.
    fn neighbour_links(&self, threshold: f32) -> Vec<Link> {
        let mut links = Vec::new();
        for (a, list) in self.lists.iter().enumerate() {
            for &(b, _) in list {
                if let Some(s) = self.pair_similarity(a, b).filter(|&s| s >= threshold) {
                    links.push((a.min(b), a.max(b), s));
                }
            }
        }
        links.sort_unstable_by_key(|l| (l.0, l.1));
        links.dedup_by_key(|l| (l.0, l.1));
        links
    }
}

/// Asks the vector index for every item's `k` nearest neighbours.
fn neighbour_lists(
    items: &[DupItem],
    index_of: &HashMap<u64, usize>,
    knn: &(dyn Fn(u64, usize) -> Vec<(u64, f32)> + Sync),
    k: usize,
    progress: &dyn Progress,
) -> Neighbours {
    let done = AtomicU64::new(0);
    let lists = items
        .par_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut list: Vec<(usize, f32)> = knn(item.key, k + 1)
                .into_iter()
                .filter_map(|(key, sim)| {
                    let j = *index_of.get(&key)?;
                    (j != i && sim.is_finite()).then_some((j, sim))
                })
                .collect();
            list.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            list.dedup_by_key(|l| l.0);
            list.truncate(k);
            if done.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
                progress.advance(1024);
            }
            list
        })
        .collect();
    progress.advance(done.load(Ordering::Relaxed) % 1024);
    Neighbours { lists }
}

/// A group under construction: item indices and the links between them.
struct IndexGroup {
    members: Vec<usize>,
    links: Vec<Link>,
}

impl IndexGroup {
    fn into_group(
        self,
        items: &[DupItem],
        kind: DuplicateKind,
        evidence: &EvidenceMap,
    ) -> DuplicateGroup {
        let mut members: Vec<u64> = self.members.iter().map(|&m| items[m].key).collect();
        members.sort_unstable();
        DuplicateGroup {
            kind,
            members,
            pairs: self
                .links
                .iter()
                .map(|&(a, b, s)| {
                    let e = evidence.get(&(a.min(b), a.max(b))).copied();
                    pair(items[a].key, items[b].key, s, e.unwrap_or_default())
                })
                .collect(),
        }
    }
}

/// Complete-linkage grouping: `links` are taken strongest first, and the groups of a link's
/// two ends merge only if every pair of units across them is `linked`, no pair of items across
/// them is held `apart`, and the result holds at most `max_group_size` items. A unit is a set
/// `explained` already joins (copies of a stronger kind); it never splits, and two units are
/// linked when any of their members are. Links inside a unit are dropped, and so is a group no
/// link of this kind joined. Returns the groups and the refused merges.
fn complete_linkage_groups(
    explained: &UnionFind,
    mut links: Vec<Link>,
    evidence: &EvidenceMap,
    linked: &dyn Fn(usize, usize) -> bool,
    apart: &dyn Fn(usize, usize) -> bool,
    max_group_size: usize,
) -> (Vec<IndexGroup>, usize) {
    let mut units = explained.clone();
    links.retain(|&(a, b, _)| units.find(a) != units.find(b));
    // The closest pixels first: a copy then joins its original before a look-alike whose hash
    // or vector happens to be as close; the score breaks ties.
    let pixels = |l: &Link| {
        evidence
            .get(&(l.0, l.1))
            .and_then(|e| e.pixel_difference)
            .unwrap_or(0.0)
    };
    links.sort_unstable_by(|x, y| {
        pixels(x)
            .total_cmp(&pixels(y))
            .then(y.2.total_cmp(&x.2))
            .then((x.0, x.1).cmp(&(y.0, y.1)))
    });

    // Members of each unit that a link touches (other units never take part).
    let mut unit_members: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(a, b, _) in &links {
        for x in [a, b] {
            unit_members.entry(units.find(x)).or_default();
        }
    }
    for i in 0..units.len() {
        if let Some(members) = unit_members.get_mut(&units.find(i)) {
            members.push(i);
        }
    }
    let units_linked = |x: usize, y: usize| {
        unit_members[&x]
            .iter()
            .any(|&p| unit_members[&y].iter().any(|&q| linked(p, q)))
    };

    // Groups of units, keyed by the group's first unit; `group_of` maps unit → that key.
    let mut group_of: HashMap<usize, usize> = unit_members.keys().map(|&u| (u, u)).collect();
    let mut group_units: HashMap<usize, Vec<usize>> =
        unit_members.keys().map(|&u| (u, vec![u])).collect();
    let mut group_size: HashMap<usize, usize> =
        unit_members.iter().map(|(&u, m)| (u, m.len())).collect();
    let mut refused = 0;
    let mut kept: Vec<Link> = Vec::with_capacity(links.len());
    for link in links {
        let (ga, gb) = (group_of[&units.find(link.0)], group_of[&units.find(link.1)]);
        if ga == gb {
            kept.push(link);
            continue;
        }
        let complete = group_size[&ga] + group_size[&gb] <= max_group_size
            && group_units[&ga]
                .iter()
                .all(|&x| group_units[&gb].iter().all(|&y| units_linked(x, y)))
            && group_units[&ga].iter().all(|x| {
                group_units[&gb].iter().all(|y| {
                    unit_members[x]
                        .iter()
                        .all(|&p| unit_members[y].iter().all(|&q| !apart(p, q)))
                })
            });
        if !complete {
            refused += 1;
            continue;
        }
        let moved = group_units.remove(&gb).unwrap_or_default();
        for &u in &moved {
            group_of.insert(u, ga);
        }
        let moved_size = group_size.remove(&gb).unwrap_or(0);
        *group_size.entry(ga).or_default() += moved_size;
        group_units.entry(ga).or_default().extend(moved);
        kept.push(link);
    }

    let mut links_by_group: HashMap<usize, Vec<Link>> = HashMap::new();
    for link in kept {
        let g = group_of[&units.find(link.0)];
        links_by_group.entry(g).or_default().push(link);
    }
    let mut groups: Vec<IndexGroup> = links_by_group
        .into_iter()
        .map(|(g, links)| {
            let mut members: Vec<usize> = group_units[&g]
                .iter()
                .flat_map(|u| unit_members[u].iter().copied())
                .collect();
            members.sort_unstable();
            IndexGroup { members, links }
        })
        .collect();
    groups.sort_unstable_by_key(|g| g.members[0]);
    (groups, refused)
}

fn pair(a: u64, b: u64, score: f32, evidence: CopyEvidence) -> DuplicatePair {
    DuplicatePair {
        a: a.min(b),
        b: a.max(b),
        score,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn bands_cover_all_bits() {
        for m in 1..=64 {
            let bands = split_bits(m);
            assert_eq!(bands.iter().map(|b| b.1).sum::<u32>(), 64);
            let mut mask = 0u64;
            for &(shift, width) in &bands {
                let band_mask = band_value(u64::MAX, 0, width) << shift;
                assert_eq!(mask & band_mask, 0);
                mask |= band_mask;
            }
            assert_eq!(mask, u64::MAX);
        }
    }

    #[test]
    fn ball_enumeration_visits_each_value_once() {
        let mut seen = Vec::new();
        visit_within(0b1010, 6, 2, 0, &mut |v| seen.push(v));
        assert_eq!(seen.len() as f64, ball_volume(6, 2));
        let unique: HashSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len());
        assert!(seen.iter().all(|&v| hamming(v, 0b1010) <= 2 && v < 64));
    }

    /// The multi-index must return exactly what comparing all pairs returns.
    #[test]
    fn multi_index_agrees_with_brute_force() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut hashes: Vec<u64> = (0..300).map(|_| rng.gen()).collect();
        // Plant close hashes at several distances.
        for i in 0..150 {
            let mut h = hashes[i];
            for _ in 0..rng.gen_range(0..14) {
                h ^= 1u64 << rng.gen_range(0..64);
            }
            hashes.push(h);
        }
        hashes.sort_unstable();
        hashes.dedup();
        for max_distance in [0, 3, 10, 13, 24] {
            let index = MultiIndex::build(&hashes, max_distance);
            for i in 0..hashes.len() {
                let brute: Vec<(usize, u32)> = (i + 1..hashes.len())
                    .map(|j| (j, hamming(hashes[i], hashes[j])))
                    .filter(|&(_, d)| d <= max_distance)
                    .collect();
                assert_eq!(
                    index.matches_after(i, &hashes),
                    brute,
                    "d={max_distance} i={i}"
                );
            }
        }
    }

    /// Few hashes: many narrow bands (exact lookups, tiny buckets). Many hashes: fewer, wider
    /// bands, so buckets stay small, at the price of probing a radius in each.
    #[test]
    fn bands_widen_as_the_catalogue_grows() {
        assert_eq!(best_band_count(100_000, 0), 1);
        let small = best_band_count(100, 10);
        let large = best_band_count(1_000_000, 10);
        assert_eq!(small, 11, "radius 0 in each of 11 bands");
        assert!((2..=4).contains(&large), "{large}");
    }
}
