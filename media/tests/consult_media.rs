//! A video consult as its participants live it: real WebRTC peers (the `webrtc` crate, as a
//! browser tab would be) join a room through the SFU over 127.0.0.1, see and hear each other,
//! stop receiving whoever leaves, are cut off when the room closes, and a camera is asked for a
//! keyframe when someone new starts watching it.

mod support;

use std::time::Duration;

use support::{eventually, init_tracing, loopback_sfu, metric_value, Client};
use uuid::Uuid;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

const CONNECT: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_receive_each_other_and_stop_receiving_whoever_leaves() -> anyhow::Result<()> {
    init_tracing();
    let registry = prometheus::Registry::new();
    let sfu = loopback_sfu(&registry)?;
    let room = Uuid::new_v4();

    let alice = Client::join(&sfu, room).await?;
    let bob = Client::join(&sfu, room).await?;
    eventually(
        "alice and bob receive each other's audio and video",
        CONNECT,
        || alice.receives_everyone_of(&[&bob]) && bob.receives_everyone_of(&[&alice]),
    )
    .await?;

    let mut carol = Client::join(&sfu, room).await?;
    let everyone = [&alice, &bob, &carol];
    eventually(
        "all three receive the audio and video of both others",
        CONNECT,
        || {
            everyone
                .iter()
                .all(|client| client.receives_everyone_of(&everyone))
        },
    )
    .await?;

    // The hub's own view: three connected participants, each sending two tracks and receiving four.
    eventually(
        "the hub counts media both ways for everyone",
        CONNECT,
        || {
            let stats = sfu.room_stats(room);
            stats.len() == 3
                && stats.iter().all(|participant| {
                    participant.state == "connected"
                        && participant.tracks_in == 2
                        && participant.tracks_out == 4
                        && participant.packets_received > 0
                        && participant.bytes_received > 0
                        && participant.bitrate_in_bps > 0
                        && participant.packets_sent > 0
                })
        },
    )
    .await?;
    let order: Vec<Uuid> = sfu
        .room_stats(room)
        .iter()
        .map(|stats| stats.participant)
        .collect();
    assert_eq!(
        order,
        vec![alice.id, bob.id, carol.id],
        "room stats list participants in joining order"
    );
    assert_eq!(
        metric_value(&registry, "medhub_media_participants", None),
        3.0
    );
    assert_eq!(metric_value(&registry, "medhub_media_rooms", None), 1.0);
    assert_eq!(
        metric_value(
            &registry,
            "medhub_media_peer_states",
            Some(("state", "connected"))
        ),
        3.0
    );
    assert!(metric_value(&registry, "medhub_media_rtp_packets_forwarded_total", None) > 0.0);
    assert!(metric_value(&registry, "medhub_media_rtp_packets_received_total", None) > 0.0);

    // Carol leaves.
    let carol_id = carol.id;
    let carol_ssrcs = (alice.ssrcs_of(carol_id), bob.ssrcs_of(carol_id));
    assert_eq!(
        carol_ssrcs.0.len(),
        2,
        "alice received carol's audio and video on one SSRC each"
    );
    assert_eq!(
        carol_ssrcs.1.len(),
        2,
        "bob received carol's audio and video on one SSRC each"
    );
    let offers_before_leaving = (alice.offers_answered(), bob.offers_answered());
    carol.leave().await?;
    assert_eq!(
        carol.hub_states().last().map(String::as_str),
        Some("closed")
    );

    // The others are renegotiated without her tracks, cleanly.
    eventually(
        "alice and bob answered an offer without carol's tracks",
        CONNECT,
        || {
            let stats = sfu.room_stats(room);
            alice.offers_answered() > offers_before_leaving.0
                && bob.offers_answered() > offers_before_leaving.1
                && alice.is_stable()
                && bob.is_stable()
                && stats.len() == 2
                && stats
                    .iter()
                    .all(|participant| participant.tracks_out == 2 && participant.tracks_in == 2)
        },
    )
    .await?;
    assert_eq!(
        metric_value(&registry, "medhub_media_participants", None),
        2.0
    );

    // After a grace for packets in flight, nothing more of carol's arrives; the others' media flows on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from_carol = (
        alice.packets_on(&carol_ssrcs.0),
        bob.packets_on(&carol_ssrcs.1),
    );
    let between_them = (
        alice.packets_from(bob.id, "video"),
        bob.packets_from(alice.id, "video"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        alice.packets_on(&carol_ssrcs.0),
        from_carol.0,
        "alice still receives carol's SSRCs"
    );
    assert_eq!(
        bob.packets_on(&carol_ssrcs.1),
        from_carol.1,
        "bob still receives carol's SSRCs"
    );
    assert!(
        alice.packets_from(bob.id, "video") > between_them.0,
        "bob's video no longer reaches alice"
    );
    assert!(
        bob.packets_from(alice.id, "video") > between_them.1,
        "alice's video no longer reaches bob"
    );
    assert!(alice.receives_everyone_of(&[&bob]) && alice.packets_from(bob.id, "audio") > 0);

    for client in [&alice, &bob, &carol] {
        assert!(
            client.errors().is_empty(),
            "signaling errors: {:?}",
            client.errors()
        );
    }
    assert_eq!(alice.state(), RTCPeerConnectionState::Connected);
    assert_eq!(bob.state(), RTCPeerConnectionState::Connected);
    for client in [alice, bob, carol] {
        client.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_room_closes_every_peer_connection() -> anyhow::Result<()> {
    init_tracing();
    let registry = prometheus::Registry::new();
    let sfu = loopback_sfu(&registry)?;
    let room = Uuid::new_v4();
    let other_room = Uuid::new_v4();

    let alice = Client::join(&sfu, room).await?;
    let bob = Client::join(&sfu, room).await?;
    let elsewhere = Client::join(&sfu, other_room).await?;
    eventually("alice and bob receive each other", CONNECT, || {
        alice.receives_everyone_of(&[&bob]) && bob.receives_everyone_of(&[&alice])
    })
    .await?;
    eventually(
        "the participant of the other room is connected",
        CONNECT,
        || elsewhere.state() == RTCPeerConnectionState::Connected,
    )
    .await?;

    sfu.close_room(room).await;

    assert!(sfu.room_stats(room).is_empty());
    eventually(
        "the hub told both it closed and ended their signals",
        Duration::from_secs(10),
        || {
            [&alice, &bob].iter().all(|client| {
                client.signals_ended()
                    && client.hub_states().last().map(String::as_str) == Some("closed")
            })
        },
    )
    .await?;
    // Their own peer connections notice the hub is gone, as a browser's would.
    eventually(
        "alice's and bob's connections fail or close",
        CONNECT,
        || {
            [&alice, &bob].iter().all(|client| {
                matches!(
                    client.state(),
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                )
            })
        },
    )
    .await?;
    assert_eq!(
        metric_value(&registry, "medhub_media_participants", None),
        1.0
    );
    assert_eq!(metric_value(&registry, "medhub_media_rooms", None), 1.0);
    assert_eq!(
        metric_value(
            &registry,
            "medhub_media_peer_states",
            Some(("state", "connected"))
        ),
        1.0
    );

    // The other room is untouched.
    assert_eq!(elsewhere.state(), RTCPeerConnectionState::Connected);
    assert_eq!(sfu.room_stats(other_room).len(), 1);
    assert!(!elsewhere.signals_ended());

    // Closing twice, or a room that never was, is harmless.
    sfu.close_room(room).await;
    sfu.close_room(Uuid::new_v4()).await;
    for client in [alice, bob] {
        client.close().await;
    }

    // A participant whose Peer is simply dropped (its WebSocket went away) leaves too.
    elsewhere.close().await;
    eventually(
        "dropping the last Peer empties the other room",
        Duration::from_secs(10),
        || sfu.room_stats(other_room).is_empty(),
    )
    .await?;
    assert_eq!(
        metric_value(&registry, "medhub_media_participants", None),
        0.0
    );
    assert_eq!(metric_value(&registry, "medhub_media_rooms", None), 0.0);
    for state in [
        "new",
        "connecting",
        "connected",
        "disconnected",
        "failed",
        "closed",
    ] {
        assert_eq!(
            metric_value(
                &registry,
                "medhub_media_peer_states",
                Some(("state", state))
            ),
            0.0,
            "peers still counted as {state}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_is_asked_for_a_keyframe_when_someone_new_starts_watching() -> anyhow::Result<()> {
    init_tracing();
    let registry = prometheus::Registry::new();
    let sfu = loopback_sfu(&registry)?;
    let room = Uuid::new_v4();

    let alice = Client::join(&sfu, room).await?;
    eventually("the hub receives alice's audio and video", CONNECT, || {
        sfu.room_stats(room)
            .first()
            .is_some_and(|stats| stats.tracks_in == 2 && stats.packets_received > 20)
    })
    .await?;
    // Nobody watches alice yet, so nobody asks her camera for anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        alice.keyframe_requests().is_empty(),
        "PLIs before anyone watched: {:?}",
        alice.keyframe_requests()
    );

    let bob = Client::join(&sfu, room).await?;
    eventually("alice's camera is asked for a keyframe", CONNECT, || {
        alice.keyframe_requests().contains(&alice.video_ssrc)
    })
    .await?;
    eventually("bob receives alice's video", CONNECT, || {
        bob.receives_everyone_of(&[&alice])
    })
    .await?;
    assert!(metric_value(&registry, "medhub_media_keyframe_requests_total", None) >= 1.0);
    // The request named alice's camera, never her microphone.
    assert!(alice
        .keyframe_requests()
        .iter()
        .all(|ssrc| *ssrc == alice.video_ssrc));

    for client in [alice, bob] {
        assert!(
            client.errors().is_empty(),
            "signaling errors: {:?}",
            client.errors()
        );
        client.close().await;
    }
    Ok(())
}
