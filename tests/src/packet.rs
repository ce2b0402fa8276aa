//! Synthetic Ethernet + IPv4 frames for BPF_PROG_TEST_RUN: TCP, UDP, ICMP, a non-first fragment.

use std::net::Ipv4Addr;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x08; // ETH_P_IP
    let total = (20 + l4.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(l4);
    p
}

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    ipv4(src, dst, 6, &t)
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut u = [0u8; 12];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, id: u16) -> Vec<u8> {
    let mut i = [0u8; 8];
    i[0] = ty;
    i[1] = code;
    i[4..6].copy_from_slice(&id.to_be_bytes());
    ipv4(src, dst, 1, &i)
}

/// A non-first fragment of a UDP datagram.
pub fn fragment(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = udp(src, 1, dst, 2);
    p[14 + 6..14 + 8].copy_from_slice(&(100u16).to_be_bytes()); // offset 800 bytes
    p
}
