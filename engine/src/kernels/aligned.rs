//! Buffers whose data starts on a 64-byte cache line.
//!
//! The kernels load and store whole 64-byte vectors. A `Vec` of floats starts 16 bytes into a
//! line as often as not, and then every such access straddles two lines and costs the CPU
//! both; starting the data on a line boundary keeps each vector in one.

/// Bytes in a cache line, and in one AVX-512 vector.
const LINE: usize = 64;

/// The first `len` elements of `buf` from its first 64-byte boundary, growing `buf` to fit.
/// The contents are whatever `buf` held there (zeros where it grew).
pub(crate) fn aligned_prefix<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let spare = LINE / std::mem::size_of::<T>().max(1);
    if buf.len() < len + spare {
        buf.resize(len + spare, T::default());
    }
    let at = buf.as_ptr().align_offset(LINE).min(spare);
    &mut buf[at..at + len]
}

/// An owned slice that starts on a 64-byte boundary (weights the kernels read every call).
#[derive(Debug, Default)]
pub(crate) struct Aligned<T> {
    buf: Vec<T>,
    at: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    pub(crate) fn from_slice(values: &[T]) -> Self {
        let mut buf = Vec::new();
        aligned_prefix(&mut buf, values.len()).copy_from_slice(values);
        let at = buf
            .as_ptr()
            .align_offset(LINE)
            .min(buf.len() - values.len());
        Self {
            buf,
            at,
            len: values.len(),
        }
    }
}

/// A clone lands wherever the allocator puts it, so it is aligned afresh.
impl<T: Copy + Default> Clone for Aligned<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.buf[self.at..self.at + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_start_on_a_cache_line_and_keep_their_values() {
        let mut buf: Vec<f32> = Vec::with_capacity(3);
        buf.push(1.0);
        for len in [0, 1, 17, 1000] {
            let part = aligned_prefix(&mut buf, len);
            assert_eq!(part.len(), len);
            assert_eq!(part.as_ptr() as usize % LINE, 0);
        }
        let values: Vec<u32> = (0..37).collect();
        let owned = Aligned::from_slice(&values);
        assert_eq!(&owned[..], &values[..]);
        assert_eq!(owned.as_ptr() as usize % LINE, 0);
        let copy = owned.clone();
        assert_eq!(&copy[..], &values[..]);
        assert_eq!(copy.as_ptr() as usize % LINE, 0);
    }
}
