//! BPF_PROG_TEST_RUN on a TC program, through aya's [`TestRun`] (feature `test-util`).

use aya::{programs::SchedClassifier, TestRun, TestRunOptions};

use crate::{Error, Result};

/// Bytes of `struct __sk_buff` we pass as test-run context (the kernel checks that the
/// fields it does not accept from user space are zero). aya takes the context as bytes, so
/// its layout is ours: `mark` and `ifindex` offsets from `linux/bpf.h`.
const SKB_CTX_LEN: usize = 192;
const SKB_MARK_OFF: usize = 8;
const SKB_IFINDEX_OFF: usize = 40;

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Clone, Debug)]
pub struct TestRunOutput {
    /// The program's return value (`TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2).
    pub retval: u32,
    /// `skb->mark` after the run.
    pub mark: u32,
    /// Packet after the run.
    pub data: Vec<u8>,
}

/// Runs `prog` once on `packet` with `skb->ifindex` and `skb->mark` set.
pub(crate) fn run(
    prog: &SchedClassifier,
    name: &'static str,
    packet: &[u8],
    ifindex: u32,
    mark: u32,
) -> Result<TestRunOutput> {
    let mut data_out = vec![0u8; packet.len() + 256];
    let mut ctx_in = [0u8; SKB_CTX_LEN];
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    ctx_in[SKB_MARK_OFF..SKB_MARK_OFF + 4].copy_from_slice(&mark.to_ne_bytes());
    ctx_in[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        })
        .map_err(|source| Error::Program { name, source })?;
    data_out.truncate((result.data_size_out as usize).min(data_out.len()));
    let mark_out = &ctx_out[SKB_MARK_OFF..SKB_MARK_OFF + 4];
    Ok(TestRunOutput {
        retval: result.return_value,
        mark: u32::from_ne_bytes(mark_out.try_into().expect("4 bytes")),
        data: data_out,
    })
}
