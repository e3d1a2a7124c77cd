//! Frames read without trusting lengths: split reads, bad and oversized
//! lengths, truncation, runs, the memory budget, large frames in pieces.

use super::*;
use crate::wire::tag::{be, fe};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[tokio::test]
async fn reads_frames_split_across_reads() {
    let mut data = frame(fe::QUERY, b"select 1\0");
    data.extend(frame(fe::TERMINATE, b""));
    let (mut a, b) = tokio::io::duplex(3);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in data.chunks(2) {
            a.write_all(chunk).await.unwrap();
        }
    });
    let mut r = FrameReader::new(b, 1 << 20);
    let f = r.next().await.unwrap();
    assert_eq!(f.tag, fe::QUERY);
    assert_eq!(f.body(), b"select 1\0");
    let f = r.next().await.unwrap();
    assert_eq!(f.tag, fe::TERMINATE);
    writer.await.unwrap();
    assert!(matches!(r.next().await, Err(FrameError::Closed)));
}

#[test]
fn rejects_bad_and_oversized_lengths() {
    assert!(matches!(
        complete_frame_len(&[fe::QUERY, 0, 0, 0, 3], 100),
        Err(FrameError::BadLength { .. })
    ));
    assert!(matches!(
        complete_frame_len(&[fe::QUERY, 0xff, 0xff, 0xff, 0xff], 1 << 30),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(matches!(
        complete_frame_len(&[fe::QUERY, 0, 0, 0, 9], 100),
        Ok(None)
    ));
}

#[tokio::test]
async fn truncated_frame_is_an_error() {
    let data = frame(fe::QUERY, b"select 1\0");
    let (mut a, b) = tokio::io::duplex(64);
    use tokio::io::AsyncWriteExt;
    a.write_all(&data[..6]).await.unwrap();
    drop(a);
    let mut r = FrameReader::new(b, 1 << 20);
    assert!(matches!(r.next().await, Err(FrameError::Truncated)));
}

#[test]
fn take_run_stops_at_inspected_frame() {
    let mut data = frame(be::DATA_ROW, b"x");
    data.extend(frame(be::DATA_ROW, b"y"));
    data.extend(frame(be::ROW_DESCRIPTION, b"z"));
    let (_, b) = tokio::io::duplex(1);
    let mut r = FrameReader::with_buffer(b, 1 << 20, BytesMut::from(&data[..]));
    let run = r.take_run(|tag, _| tag == be::DATA_ROW).unwrap().unwrap();
    assert_eq!(run.len(), 12);
    assert_eq!(r.try_frame().unwrap().unwrap().tag, be::ROW_DESCRIPTION);
}

#[tokio::test]
async fn a_frame_over_the_budget_is_discarded_and_the_next_one_read() {
    use crate::wire::budget::{Budget, Refusal};
    let big = vec![b'x'; Budget::FREE_BYTES * 4];
    let mut data = frame(fe::QUERY, &big);
    data.extend(frame(fe::QUERY, b"select 1\0"));
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        a.write_all(&data).await.unwrap();
    });
    let mut r = FrameReader::new(b, 1 << 30);
    // Room for the frame itself but not for twice it.
    r.set_budget(
        Budget::new(Budget::FREE_BYTES * 6, std::time::Duration::from_millis(10)),
        2,
    );
    match r.next().await {
        Err(FrameError::OverBudget { tag, len, why }) => {
            assert_eq!(
                (tag, len, why),
                (fe::QUERY, big.len() + 5, Refusal::TooLarge)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(r.buf.capacity() < big.len(), "the refused frame was held");
    let f = r.next().await.unwrap();
    assert_eq!(f.body(), b"select 1\0");
    writer.await.unwrap();
}

#[tokio::test]
async fn a_charged_frame_is_allocated_once_and_its_charge_handed_over() {
    use crate::wire::budget::Budget;
    let big = vec![b'y'; Budget::FREE_BYTES * 3 + 7];
    let data = frame(fe::COPY_DATA, &big);
    let (mut a, b) = tokio::io::duplex(8 * 1024);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        a.write_all(&data).await.unwrap();
    });
    let budget = Budget::new(1 << 30, std::time::Duration::from_millis(10));
    let mut r = FrameReader::new(b, 1 << 30);
    r.set_budget(budget.clone(), 2);
    r.fill().await.unwrap();
    assert_eq!(r.buf.capacity(), big.len() + 5, "one exact allocation");
    let f = r.try_frame().unwrap().unwrap();
    assert_eq!(f.raw.len(), big.len() + 5);
    // Only the frame holds its memory: the reader kept no share of it.
    assert!(
        f.raw.is_unique(),
        "the reader still shares the frame's allocation"
    );
    let charge = r.take_charge().expect("the frame's charge");
    assert!(budget.available().unwrap() <= (1 << 30) - 2 * f.raw.len());
    drop(charge);
    assert_eq!(budget.available(), Some(1 << 30));
    writer.await.unwrap();
}

#[tokio::test]
async fn next_run_passes_a_large_frame_in_pieces() {
    use crate::wire::budget::Budget;
    let big = vec![b'z'; Budget::FREE_BYTES * 8];
    let mut data = frame(fe::QUERY, b"select 1\0");
    data.extend(frame(fe::QUERY, &big));
    data.extend(frame(fe::TERMINATE, b""));
    let expect = data.clone();
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        a.write_all(&data).await.unwrap();
    });
    let mut r = FrameReader::new(b, 1 << 30);
    let mut got = Vec::new();
    let mut tags = Vec::new();
    let mut largest = 0;
    loop {
        match r
            .next_run(|tag, _| {
                tags.push(tag);
                true
            })
            .await
        {
            Ok(run) => {
                largest = largest.max(run.len());
                got.extend_from_slice(&run);
            }
            Err(FrameError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    writer.await.unwrap();
    assert_eq!(got, expect, "the bytes pass unchanged");
    assert_eq!(tags, [fe::QUERY, fe::QUERY, fe::TERMINATE]);
    assert!(largest < big.len() / 2, "the large frame was held whole");
}

#[tokio::test]
async fn a_large_frame_can_be_passed_in_pieces_after_its_head() {
    use crate::wire::budget::Budget;
    let big = vec![b'b'; Budget::FREE_BYTES * 8];
    let mut body = b"portal\0stmt\0".to_vec();
    body.extend_from_slice(&big);
    let mut data = frame(fe::QUERY, b"select 1\0");
    data.extend(frame(fe::BIND, &body));
    data.extend(frame(fe::SYNC, b""));
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        a.write_all(&sent).await.unwrap();
    });
    let budget = Budget::new(Budget::FREE_BYTES * 2, std::time::Duration::from_millis(10));
    let mut r = FrameReader::new(b, 1 << 30);
    r.set_budget(budget.clone(), 2);
    // A small frame: read as usual.
    assert_eq!(r.large_head(64).await.unwrap(), None);
    assert_eq!(r.next().await.unwrap().tag, fe::QUERY);
    // The large one: its head, then its pieces, never charged.
    let (tag, total) = r.large_head(64).await.unwrap().expect("a large head");
    assert_eq!((tag, total), (fe::BIND, body.len() + 5));
    assert!(r.buffered().len() >= 64);
    assert!(r.buffered()[5..].starts_with(b"portal\0stmt\0"));
    r.pass_head(total);
    let mut got = Vec::new();
    let mut largest = 0;
    while let Some(p) = r.next_piece().await.unwrap() {
        largest = largest.max(p.len());
        got.extend_from_slice(&p);
    }
    assert_eq!(got, data[14..14 + total], "the frame passes unchanged");
    assert!(largest < big.len() / 4, "the frame was held whole");
    assert_eq!(budget.available(), Some(Budget::FREE_BYTES * 2));
    // And the reader stands at the next frame.
    assert_eq!(r.next().await.unwrap().tag, fe::SYNC);
    writer.await.unwrap();
}
