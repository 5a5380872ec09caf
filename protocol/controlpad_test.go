package protocol

import (
	"fmt"
	"testing"
)

// TestControlPacketWithoutLine: a control-only packet (FIN, heartbeat, bare SYN) that the
// scheme leaves as is — after stop, or before stop on a packet number with no line — carries
// a cmdWaste frame of random size in the same write, so that no fixed-size record betrays it;
// a packet with stream data and no line goes out as is. The packet counter still counts them.
func TestControlPacketWithoutLine(t *testing.T) {
	scheme := MustParsePaddingScheme("stop=4\n1=50-50\n3=60-60")
	for _, c := range []struct {
		pkt     int
		control bool
	}{{2, true}, {2, false}, {4, true}, {4, false}, {1, true}, {3, true}} {
		t.Run(fmt.Sprintf("pkt%d/control=%v", c.pkt, c.control), func(t *testing.T) {
			rc := &recConn{Conn: discardConn{}}
			s := newSession(rc, true, &sessionConfig{logger: discardLogger}, scheme, true)
			s.pkt = c.pkt
			fin := AppendFrame(nil, CmdFIN, 1, nil)
			if err := s.writePacketOpt(fin, nil, 0, c.control); err != nil {
				t.Fatal(err)
			}
			writes := rc.Writes()
			switch {
			case c.pkt == 1 || c.pkt == 3: // the line pads it: FIN + cmdWaste to the listed size
				if want := map[int]int{1: 50, 3: 60}[c.pkt]; len(writes) != 1 || len(writes[0]) != want {
					t.Fatalf("records %v, want one of the listed size", sizesOf(writes))
				}
			case c.control:
				if len(writes) != 1 {
					t.Fatalf("records %v, want one", sizesOf(writes))
				}
				frames := parseFrames(t, writes[0])
				if len(frames) != 2 || frames[0].Cmd != CmdFIN || frames[1].Cmd != CmdWaste {
					t.Fatalf("control packet %d = %v, want FIN + one cmdWaste in one record", c.pkt, frames)
				}
			default:
				if len(writes) != 1 || len(writes[0]) != len(fin) {
					t.Fatalf("records %v, want the packet as is (%d bytes)", sizesOf(writes), len(fin))
				}
			}
			if want := min(c.pkt+1, max(c.pkt, scheme.Stop())); s.pkt != want {
				t.Fatalf("packet counter = %d after packet %d, want %d", s.pkt, c.pkt, want)
			}
		})
	}
}
