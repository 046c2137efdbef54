/* Structures shared by the XDP program (bpf/xtrace.c) and the agent.
 *
 * This header holds ONLY what both sides read. The agent never re-declares these layouts:
 * the compile step reports each map's key/value layout (field names, offsets, sizes) as BCC
 * sees it, and the agent builds its decoders from that report. The numbering of traffic types
 * and untracked reasons is the agent's (xtrace_agent/xdp/layout.py), passed with -D, so that it
 * is written once.
 */
#ifndef XTRACE_H
#define XTRACE_H

#if !defined(XT_TRAFFIC_ETHERNET) || !defined(XT_UNTRACKED_MALFORMED) || !defined(XT_EGRESS)
#error "compile through the agent (xtrace_agent.xdp.compiler): it defines XT_TRAFFIC_*, XT_UNTRACKED_* and XT_EGRESS"
#endif

/* One flow, per interface and direction: XT_EGRESS (the top bit, never part of a kernel ifindex)
 * set in ifindex marks what the interface sent (TC egress) from what it received (XDP); the
 * direction rides in the word the key already has, so the hash costs nothing more.
 * Addresses are 16 bytes; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) and ip_version says which text form to print. Ports are host order and
 * 0 for protocols without ports and for non-first fragments.
 *
 * A key with ip_version 0 is not a flow: it is the interface's `untracked` entry for the reason
 * in `protocol` (XT_UNTRACKED_*), every other field but ifindex zero. Those packets count in the
 * interface total and in its `other` flow. */
struct flow_key {
    __u32 ifindex;
    __u8  src[16];
    __u8  dst[16];
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;       /* IANA protocol number (final, after IPv6 extension headers) */
    __u8  traffic_type;   /* XT_TRAFFIC_* */
    __u8  rdma_opcode;    /* BTH opcode, RoCEv2 only */
    __u8  ip_version;     /* 4 or 6; 0 for an untracked entry */
    __u32 dest_qp;        /* BTH destination QP (24 bits), RoCEv2 only */
};

/* Per-CPU value of a flow or untracked entry: packets the program saw (not scaled by sampling). */
struct counters {
    __u64 packets;
    __u64 bytes;
};

/* The `state` array: element XT_STATE_OWNER is written by the agent that loaded the program (so
 * a second agent can tell a live owner from a crashed one); element XT_STATE_UNATTRIBUTED is
 * added to by the program (atomically) for packets it could not put under any interface. */
#define XT_STATE_OWNER        0
#define XT_STATE_UNATTRIBUTED 1

struct xt_state {
    __u64 pid;            /* owner: process id, in the namespace named by pidns */
    __u64 pidns;          /* owner: inode of /proc/<pid>/ns/pid */
    __u64 start_time;     /* owner: field 22 of /proc/<pid>/stat (tells a reused pid) */
    __u64 heartbeat_ns;   /* owner: CLOCK_BOOTTIME of its last report */
    __u64 interval_ns;    /* owner: its report interval */
    __u64 pod;            /* owner: hash of its pod's namespace/name (0 outside a pod) */
    __u64 packets;        /* unattributed */
    __u64 bytes;          /* unattributed */
};

#endif
