//! Metadata contexts: `NBD_OPT_LIST_META_CONTEXT` and
//! `NBD_OPT_SET_META_CONTEXT`. The one context served is
//! `base:allocation` (holes and zeroes, from
//! [`crate::BlockDevice::block_status`]).
//!
//! Both options carry: u32 export name length, the name, u32 number of
//! queries, then each query as u32 length and string. LIST with no query
//! lists every context; a `base:` query lists the `base:` ones. SET selects
//! exactly the contexts named (replacing any earlier selection); queries
//! for other namespaces select nothing. Both need structured replies
//! negotiated first.

use bytes::{Buf, Bytes};

use super::consts::{MAX_OPTION_LEN, META_BASE_ALLOCATION};

/// A parsed `NBD_OPT_*_META_CONTEXT` request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MetaRequest {
    /// The export the contexts are for.
    pub(crate) name: Bytes,
    /// The queries, in order.
    pub(crate) queries: Vec<Bytes>,
}

impl MetaRequest {
    /// Parses the option data; `None` if the lengths do not add up to
    /// exactly `data` (which is bounded by [`MAX_OPTION_LEN`]).
    pub(crate) fn parse(data: &[u8]) -> Option<MetaRequest> {
        debug_assert!(data.len() <= MAX_OPTION_LEN as usize);
        let mut d = data;
        let name = take_string(&mut d)?;
        if d.remaining() < 4 {
            return None;
        }
        let count = d.get_u32();
        // Each query takes at least 4 bytes: a count beyond that is a lie.
        if u64::from(count) * 4 > d.remaining() as u64 {
            return None;
        }
        let mut queries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            queries.push(take_string(&mut d)?);
        }
        d.is_empty().then_some(MetaRequest { name, queries })
    }

    /// The contexts to answer with: for LIST (`list`), those the queries
    /// match (all, with no query); for SET, those named exactly.
    pub(crate) fn matches(&self, list: bool) -> Vec<&'static str> {
        let wanted = if list && self.queries.is_empty() {
            true
        } else {
            self.queries
                .iter()
                .any(|q| &q[..] == META_BASE_ALLOCATION.as_bytes() || (list && &q[..] == b"base:"))
        };
        if wanted {
            vec![META_BASE_ALLOCATION]
        } else {
            Vec::new()
        }
    }
}

/// Takes a u32 length and that many bytes.
fn take_string(d: &mut &[u8]) -> Option<Bytes> {
    if d.remaining() < 4 {
        return None;
    }
    let len = usize::try_from(d.get_u32()).ok()?;
    if d.remaining() < len {
        return None;
    }
    Some(d.copy_to_bytes(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn encode(name: &str, queries: &[&str]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(name.len() as u32);
        b.put_slice(name.as_bytes());
        b.put_u32(queries.len() as u32);
        for q in queries {
            b.put_u32(q.len() as u32);
            b.put_slice(q.as_bytes());
        }
        b
    }

    #[test]
    fn queries_parse_match_and_reject_inconsistent_lengths() {
        let ok = encode("vol", &["base:allocation", "qemu:dirty-bitmap:x"]);
        let req = MetaRequest::parse(&ok).expect("parses");
        assert_eq!(&req.name[..], b"vol");
        assert_eq!(req.matches(false), vec![META_BASE_ALLOCATION]);
        let other = MetaRequest::parse(&encode("", &["qemu:allocation-depth"])).expect("parses");
        assert!(other.matches(false).is_empty() && other.matches(true).is_empty());
        let none = MetaRequest::parse(&encode("", &[])).expect("parses");
        assert!(
            none.matches(false).is_empty(),
            "SET with no query selects none"
        );
        assert_eq!(none.matches(true), vec![META_BASE_ALLOCATION]);
        let ns = MetaRequest::parse(&encode("", &["base:"])).expect("parses");
        assert_eq!(ns.matches(true), vec![META_BASE_ALLOCATION]);
        assert!(ns.matches(false).is_empty());
        for cut in 0..ok.len() {
            assert!(MetaRequest::parse(&ok[..cut]).is_none(), "cut {cut}");
        }
        let mut long = ok.clone();
        long.put_u8(0);
        assert!(MetaRequest::parse(&long).is_none());
        let mut lying = BytesMut::new();
        lying.put_u32(0);
        lying.put_u32(u32::MAX);
        assert!(MetaRequest::parse(&lying).is_none());
    }
}
