//! PyTorch checkpoints read without Python.
//!
//! Both framings PyTorch has written are supported:
//!
//! - **legacy** (`torch.save(..., _use_new_zipfile_serialization=False)`, the default before
//!   PyTorch 1.6): five pickles back to back — the magic number, the protocol version (1001),
//!   a `sys_info` dict, the object itself (here a state dict whose tensors name their storages
//!   through `persistent_load` ids), and the list of storage keys — followed, for each key in
//!   that list, by a little-endian `u64` element count and the storage's raw bytes.
//! - **zip** (the default since 1.6): `<prefix>/data.pkl` holds the pickled object and each
//!   storage is the entry `<prefix>/data/<key>`.
//!
//! The unpickling itself reuses candle's `pickle::Stack`; what this module adds is the framing,
//! strided tensors (checkpoints converted from TensorFlow keep transposed strides) and errors
//! that say which file is wrong and how.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The number every legacy PyTorch file starts with (`torch.serialization.MAGIC_NUMBER`).
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// The legacy framing's protocol version (`torch.serialization.PROTOCOL_VERSION`).
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Which of PyTorch's two framings a file uses, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PthFraming {
    Legacy,
    Zip,
}

/// Tells the framing from a file's first bytes, or `None` when it is neither.
pub(crate) fn sniff(head: &[u8]) -> Option<PthFraming> {
    if head.starts_with(b"PK\x03\x04") {
        Some(PthFraming::Zip)
    } else if head.first() == Some(&0x80) {
        // A pickle: PROTO opcode. Only the legacy framing starts with a bare pickle.
        Some(PthFraming::Legacy)
    } else {
        None
    }
}

/// Reads every tensor of a PyTorch state dict, in either framing, onto the CPU.
pub(crate) fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match sniff(&bytes) {
        Some(PthFraming::Legacy) => read_legacy(path, &bytes),
        Some(PthFraming::Zip) => read_zip(path, bytes),
        None if bytes.is_empty() => Err(not_weights(path, "the file is empty")),
        None => Err(not_weights(
            path,
            "it starts with neither a pickle nor a zip header",
        )),
    }
}

/// A storage as a tensor names it: the key its bytes are filed under and their element type.
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: StorageDtype,
    /// Elements to skip at the start of the root storage (only legacy storage views have any).
    view_offset: usize,
}

/// A tensor as the pickle describes it: a strided window onto a storage.
#[derive(Debug, Clone)]
struct TensorRef {
    name: String,
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A storage's element type: candle's when it has one, or the PyTorch class name otherwise so
/// that the error can name it.
#[derive(Debug, Clone)]
enum StorageDtype {
    Known(DType),
    Unsupported(String),
}

impl StorageDtype {
    fn from_class(class_name: &str) -> Self {
        let dtype = match class_name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "ByteStorage" | "BoolStorage" => DType::U8,
            "ShortStorage" => DType::I16,
            "IntStorage" => DType::I32,
            "LongStorage" => DType::I64,
            other => return StorageDtype::Unsupported(other.to_string()),
        };
        StorageDtype::Known(dtype)
    }
}

fn not_weights(path: &Path, reason: impl Into<String>) -> Error {
    Error::NotWeightsFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn unsupported(path: &Path, tensor: &str, class: &str) -> Error {
    Error::UnsupportedWeightDtype {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        dtype: class.to_string(),
    }
}

fn truncated(path: &Path, reason: impl Into<String>) -> Error {
    Error::TruncatedWeights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn malformed(path: &Path, reason: impl Into<String>) -> Error {
    Error::MalformedWeights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Unpickles one object from `cursor`, telling a file that ends early from a broken one.
fn unpickle(path: &Path, cursor: &mut Cursor<&[u8]>, what: &str) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(cursor).map_err(|e| {
        if cursor.position() as usize >= cursor.get_ref().len() {
            truncated(path, format!("the file ends inside the {what} pickle"))
        } else {
            malformed(path, format!("cannot unpickle the {what}: {e}"))
        }
    })?;
    stack
        .finalize()
        .map_err(|e| malformed(path, format!("the {what} pickle is empty: {e}")))
}

/// Reads the legacy magic-number pickle by hand: it is an 80-bit integer, wider than the `i64`
/// candle's unpickler decodes.
fn read_legacy_magic(path: &Path, cursor: &mut Cursor<&[u8]>) -> Result<()> {
    let bytes = *cursor.get_ref();
    // PROTO 2, LONG1 <n> <n bytes little-endian>, STOP.
    let bad = || {
        not_weights(
            path,
            "a pickle, but not a PyTorch checkpoint (no magic number)",
        )
    };
    if bytes.len() < 4 || bytes[0] != 0x80 || bytes[2] != 0x8a {
        return Err(bad());
    }
    let n = bytes[3] as usize;
    if n > 16 || bytes.len() < 4 + n + 1 || bytes[4 + n] != b'.' {
        return Err(bad());
    }
    let magic = bytes[4..4 + n]
        .iter()
        .rev()
        .fold(0u128, |acc, &b| (acc << 8) | b as u128);
    if magic != LEGACY_MAGIC {
        return Err(bad());
    }
    cursor.set_position((4 + n + 1) as u64);
    Ok(())
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut cursor = Cursor::new(bytes);
    read_legacy_magic(path, &mut cursor)?;

    let version = unpickle(path, &mut cursor, "protocol version")?;
    match version.int_or_long() {
        Ok(LEGACY_PROTOCOL_VERSION) => {}
        Ok(other) => {
            return Err(malformed(
                path,
                format!("protocol version {other}, expected {LEGACY_PROTOCOL_VERSION}"),
            ))
        }
        Err(other) => {
            return Err(malformed(
                path,
                format!("the protocol version is not an integer: {other:?}"),
            ))
        }
    }

    let sys_info = unpickle(path, &mut cursor, "sys_info")?;
    if let Object::Dict(entries) = &sys_info {
        let big_endian = entries.iter().any(|(k, v)| {
            *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false)
        });
        if big_endian {
            return Err(malformed(path, "written on a big-endian machine"));
        }
    }

    let state = unpickle(path, &mut cursor, "state dict")?;
    let refs = tensor_refs(path, state)?;

    let keys = unpickle(path, &mut cursor, "storage key list")?;
    let keys = match keys {
        Object::List(keys) => keys,
        other => {
            return Err(malformed(
                path,
                format!("the storage key list is not a list: {other:?}"),
            ))
        }
    };

    // Element sizes come from the tensors that use each storage; one of a type candle lacks
    // leaves the rest of the file unreadable, so it is reported first.
    let mut element_size: HashMap<&str, usize> = HashMap::new();
    for r in &refs {
        match &r.storage.dtype {
            StorageDtype::Known(dtype) => {
                element_size.insert(&r.storage.key, dtype.size_in_bytes());
            }
            StorageDtype::Unsupported(class) => return Err(unsupported(path, &r.name, class)),
        }
    }

    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    let mut pos = cursor.position() as usize;
    for key in keys {
        let key = key
            .unicode()
            .map_err(|k| malformed(path, format!("storage key {k:?} is not a string")))?;
        let head = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| truncated(path, format!("the file ends before storage {key}")))?;
        let numel = u64::from_le_bytes(head.try_into().unwrap_or([0; 8])) as usize;
        pos += 8;
        let size = match element_size.get(key.as_str()) {
            Some(size) => *size,
            None => {
                return Err(malformed(
                    path,
                    format!("storage {key} is listed but no tensor uses it"),
                ))
            }
        };
        let len = numel
            .checked_mul(size)
            .ok_or_else(|| malformed(path, format!("storage {key} claims {numel} elements")))?;
        let data = bytes.get(pos..pos + len).ok_or_else(|| {
            truncated(
                path,
                format!(
                    "storage {key} needs {len} bytes at offset {pos}, the file has {}",
                    bytes.len()
                ),
            )
        })?;
        storages.insert(key, data);
        pos += len;
    }

    refs.into_iter()
        .map(|r| {
            let data = storages.get(&r.storage.key).copied().ok_or_else(|| {
                malformed(
                    path,
                    format!(
                        "tensor {} uses storage {} that the file lacks",
                        r.name, r.storage.key
                    ),
                )
            })?;
            build_tensor(path, r, data)
        })
        .collect()
}

fn read_zip(path: &Path, bytes: Vec<u8>) -> Result<Vec<(String, Tensor)>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| malformed(path, format!("a zip file, but unreadable: {e}")))?;
    let pickle_name = archive
        .file_names()
        .find(|name| name.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| not_weights(path, "a zip file without a data.pkl entry"))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();

    let read_entry = |archive: &mut zip::ZipArchive<Cursor<Vec<u8>>>, name: &str| {
        let mut entry = archive
            .by_name(name)
            .map_err(|e| malformed(path, format!("entry {name}: {e}")))?;
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| truncated(path, format!("entry {name}: {e}")))?;
        Ok::<_, Error>(data)
    };

    let pickle = read_entry(&mut archive, &pickle_name)?;
    let state = unpickle(path, &mut Cursor::new(pickle.as_slice()), "state dict")?;
    // TorchScript archives wrap the state in a `__torch__.Module` build.
    let state = match state {
        Object::Build { callable, args } => match *callable {
            Object::Reduce { callable, .. } if matches!(&*callable, Object::Class { module_name, .. } if module_name == "__torch__") => {
                *args
            }
            other => Object::Build {
                callable: Box::new(other),
                args,
            },
        },
        other => other,
    };
    let refs = tensor_refs(path, state)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for r in &refs {
        if !storages.contains_key(&r.storage.key) {
            let data = read_entry(&mut archive, &format!("{prefix}data/{}", r.storage.key))?;
            storages.insert(r.storage.key.clone(), data);
        }
    }
    refs.into_iter()
        .map(|r| {
            let data = storages
                .get(&r.storage.key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            build_tensor(path, r, data)
        })
        .collect()
}

/// Walks the unpickled state dict and describes each tensor in it. Entries that are not
/// tensors (PyTorch's `_metadata`, hyper-parameters) are skipped.
fn tensor_refs(path: &Path, state: Object) -> Result<Vec<TensorRef>> {
    let entries = match state {
        Object::Dict(entries) => entries,
        other => {
            return Err(malformed(
                path,
                format!("expected a state dict, found {}", describe(&other)),
            ))
        }
    };
    let mut refs = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let Object::Unicode(name) = name else {
            continue;
        };
        if let Some(r) = tensor_ref(path, &name, value)? {
            refs.push(r);
        }
    }
    if refs.is_empty() {
        return Err(not_weights(path, "the pickled dict holds no tensors"));
    }
    Ok(refs)
}

fn describe(obj: &Object) -> &'static str {
    match obj {
        Object::Class { .. } => "a class",
        Object::Int(_) | Object::Long(_) => "an integer",
        Object::Float(_) => "a float",
        Object::Unicode(_) => "a string",
        Object::Bool(_) => "a boolean",
        Object::None => "None",
        Object::Tuple(_) => "a tuple",
        Object::List(_) => "a list",
        Object::Mark => "a mark",
        Object::Dict(_) => "a dict",
        Object::Reduce { .. } | Object::Build { .. } => "an object",
        Object::PersistentLoad(_) => "a storage",
    }
}

fn is_class(obj: &Object, module: &str, class: &str) -> bool {
    matches!(obj, Object::Class { module_name, class_name } if module_name == module && class_name == class)
}

/// Describes one state-dict value if it is a tensor (`torch._utils._rebuild_tensor_v2`, maybe
/// wrapped in `_rebuild_parameter` or `_rebuild_from_type_v2`).
fn tensor_ref(path: &Path, name: &str, value: Object) -> Result<Option<TensorRef>> {
    let bad = |what: &str| malformed(path, format!("tensor {name}: {what}"));
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let (callable, args) = (*callable, *args);
    let (callable, args) = if is_class(&callable, "torch._utils", "_rebuild_parameter") {
        match args
            .tuple()
            .ok()
            .and_then(|mut a| (!a.is_empty()).then(|| a.remove(0)))
        {
            Some(Object::Reduce { callable, args }) => (*callable, *args),
            _ => return Err(bad("a parameter that does not wrap a tensor")),
        }
    } else if is_class(&callable, "torch._tensor", "_rebuild_from_type_v2") {
        // (function, type, args, state)
        match args.tuple() {
            Ok(mut a) if a.len() >= 3 => {
                let inner_args = a.remove(2);
                (a.remove(0), inner_args)
            }
            _ => return Err(bad("a subclassed tensor with unexpected arguments")),
        }
    } else {
        (callable, args)
    };
    if !is_class(&callable, "torch._utils", "_rebuild_tensor_v2")
        && !is_class(&callable, "torch._utils", "_rebuild_tensor")
    {
        return Ok(None);
    }

    // (storage, storage_offset, size, stride, ...)
    let mut args = args
        .tuple()
        .map_err(|_| bad("rebuild arguments are not a tuple"))?;
    if args.len() < 4 {
        return Err(bad("too few rebuild arguments"));
    }
    let stride =
        usize_tuple(args.remove(3)).ok_or_else(|| bad("stride is not a tuple of sizes"))?;
    let shape = usize_tuple(args.remove(2)).ok_or_else(|| bad("size is not a tuple of sizes"))?;
    let offset = args
        .remove(1)
        .int_or_long()
        .ok()
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(|| bad("storage offset is not a size"))?;
    if shape.len() != stride.len() {
        return Err(bad("size and stride differ in length"));
    }
    let storage = match args.remove(0) {
        Object::PersistentLoad(id) => {
            storage_ref(*id).ok_or_else(|| bad("unreadable storage id"))?
        }
        _ => return Err(bad("its storage is not a persistent id")),
    };
    Ok(Some(TensorRef {
        name: name.to_string(),
        storage,
        offset,
        shape,
        stride,
    }))
}

fn usize_tuple(obj: Object) -> Option<Vec<usize>> {
    obj.tuple()
        .ok()?
        .into_iter()
        .map(|o| o.int_or_long().ok().and_then(|v| usize::try_from(v).ok()))
        .collect()
}

/// Parses `('storage', <class>, key, location, numel[, view_metadata])`.
fn storage_ref(id: Object) -> Option<StorageRef> {
    let mut id = id.tuple().ok()?;
    if id.len() < 5 || id[0] != Object::Unicode("storage".into()) {
        return None;
    }
    let view = if id.len() >= 6 {
        id.remove(5)
    } else {
        Object::None
    };
    let key = id.remove(2).unicode().ok()?;
    let (_, class_name) = id.remove(1).class().ok()?;
    // Legacy storage views: (view_key, offset, size) into the root storage `key`.
    let view_offset = match view {
        Object::Tuple(mut v) if v.len() == 3 => {
            usize::try_from(v.remove(1).int_or_long().ok()?).ok()?
        }
        _ => 0,
    };
    Some(StorageRef {
        key,
        dtype: StorageDtype::from_class(&class_name),
        view_offset,
    })
}

/// Copies a strided window of a storage into a contiguous CPU tensor.
fn build_tensor(path: &Path, r: TensorRef, storage: &[u8]) -> Result<(String, Tensor)> {
    let dtype = match &r.storage.dtype {
        StorageDtype::Known(dtype) => *dtype,
        StorageDtype::Unsupported(class) => return Err(unsupported(path, &r.name, class)),
    };
    let size = dtype.size_in_bytes();
    let storage_numel = storage.len() / size;
    let numel: usize = r.shape.iter().product();
    let offset = r.storage.view_offset + r.offset;
    if numel > 0 {
        let last = r
            .shape
            .iter()
            .zip(&r.stride)
            .try_fold(offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            });
        if !matches!(last, Some(last) if last < storage_numel) {
            return Err(truncated(
                path,
                format!(
                    "tensor {} (size {:?}, stride {:?}, offset {offset}) reaches past its storage of {storage_numel} elements",
                    r.name, r.shape, r.stride
                ),
            ));
        }
    }
    let data = gather_strided(storage, size, offset, &r.shape, &r.stride);
    let tensor = Tensor::from_raw_buffer(&data, dtype, &r.shape, &Device::Cpu)
        .map_err(|e| malformed(path, format!("tensor {}: {e}", r.name)))?;
    Ok((r.name, tensor))
}

/// Row-major copy of the elements a (shape, stride, offset) view selects. The caller has
/// checked that every selected element lies inside `storage`.
fn gather_strided(
    storage: &[u8],
    elem: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Vec::new();
    }
    let mut contiguous = true;
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            contiguous = false;
            break;
        }
        expected *= d;
    }
    if contiguous {
        return storage[offset * elem..(offset + numel) * elem].to_vec();
    }
    let mut out = Vec::with_capacity(numel * elem);
    let rank = shape.len();
    let mut index = vec![0usize; rank];
    let mut pos = offset;
    for _ in 0..numel {
        out.extend_from_slice(&storage[pos * elem..(pos + 1) * elem]);
        // Odometer increment over the row-major index, keeping `pos` in step.
        for dim in (0..rank).rev() {
            index[dim] += 1;
            pos += stride[dim];
            if index[dim] < shape[dim] {
                break;
            }
            pos -= stride[dim] * shape[dim];
            index[dim] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_transposed_views() {
        // A 2x3 matrix stored column-major: storage [0,3,1,4,2,5] with stride (1, 2).
        let storage: Vec<u8> = [0f32, 3., 1., 4., 2., 5.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let out = gather_strided(&storage, 4, 0, &[2, 3], &[1, 2]);
        let values: Vec<f32> = out
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(values, [0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn gathers_contiguous_with_offset() {
        let storage: Vec<u8> = (0u8..10).collect();
        assert_eq!(
            gather_strided(&storage, 1, 2, &[2, 2], &[2, 1]),
            [2, 3, 4, 5]
        );
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// The fixtures are written by `scripts/make_pth_fixtures.py`; the expected values are the
    /// state dict that script builds.
    #[test]
    fn reads_both_framings_of_the_fixture() {
        for name in ["tiny_legacy.pth", "tiny_zip.pth"] {
            let tensors: HashMap<String, Tensor> =
                read_pth(&fixture(name)).unwrap().into_iter().collect();
            let get = |k: &str| tensors.get(k).unwrap_or_else(|| panic!("{name}: no {k}"));
            assert_eq!(
                get("layer.weight").to_vec2::<f32>().unwrap(),
                [[0., 2., 4.], [1., 3., 5.]],
                "{name}"
            );
            assert_eq!(
                get("layer.bias").to_vec1::<f64>().unwrap(),
                [0.5, -1.5, 2.25]
            );
            assert_eq!(get("half").dtype(), DType::F16);
            assert_eq!(
                get("half")
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
                [[1., 2.], [3., 4.]]
            );
            assert_eq!(get("steps").to_scalar::<i64>().unwrap(), 7);
            assert_eq!(get("shared.a").to_vec1::<f32>().unwrap(), [1., 2., 3.]);
            assert_eq!(
                get("shared.b").to_vec2::<f32>().unwrap(),
                [[6., 7.], [8., 9.]]
            );
            assert_eq!(tensors.len(), 6, "{name}");
        }
    }

    #[test]
    fn truncated_legacy_files_are_named_as_such() {
        let bytes = std::fs::read(fixture("tiny_legacy.pth")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Cut inside the storages, then inside the state-dict pickle.
        for keep in [bytes.len() - 5, 200] {
            let path = dir.path().join(format!("cut{keep}.pth"));
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let err = read_pth(&path).unwrap_err();
            assert!(
                matches!(err, Error::TruncatedWeights { .. }),
                "{keep}: {err}"
            );
            assert!(err.to_string().contains(&format!("cut{keep}.pth")), "{err}");
        }
    }

    #[test]
    fn a_plain_pickle_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.pkl");
        // pickle.dumps([], protocol=2)
        std::fs::write(&path, [0x80, 0x02, b']', b'q', 0x00, b'.']).unwrap();
        let err = read_pth(&path).unwrap_err();
        assert!(matches!(err, Error::NotWeightsFile { .. }), "{err}");
    }

    #[test]
    fn sniffs_framings() {
        assert_eq!(sniff(b"PK\x03\x04rest"), Some(PthFraming::Zip));
        assert_eq!(sniff(&[0x80, 0x02, 0x8a]), Some(PthFraming::Legacy));
        assert_eq!(sniff(b"{\"a\":1}"), None);
    }
}
