package protocol

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"testing/synctest"
)

// discardConn accepts every write.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error) { return len(b), nil }
func (discardConn) Close() error                { return nil }

// specRecord is what spec §6/§6.1 says one record of a padded packet holds.
type specRecord struct {
	data int // bytes of the packet's data in this record
	size int // total size of the write
}

// specRecords is the spec's rule, written independently of the engine: data is cut to the
// listed sizes; the record where the data ends is filled with a cmdWaste frame to the listed
// size when the frame fits; records after the data are one cmdWaste frame of the listed size
// (header counted, at least 7 bytes); a check mark stops the packet when no data is left; data
// left after the list goes out as is.
func specRecords(sizes []int, n int) []specRecord {
	var out []specRecord
	for _, size := range sizes {
		if size == CheckMark {
			if n == 0 {
				break
			}
			continue
		}
		switch {
		case n >= size:
			out = append(out, specRecord{size, size})
			n -= size
		case n > 0:
			if size-n >= HeaderSize {
				out = append(out, specRecord{n, size})
			} else {
				out = append(out, specRecord{n, n})
			}
			n = 0
		default:
			out = append(out, specRecord{0, max(size, HeaderSize)})
		}
	}
	if n > 0 {
		out = append(out, specRecord{n, n})
	}
	return out
}

// checkRecords compares writes with the spec's records for data, byte for byte.
func checkRecords(t *testing.T, what string, writes [][]byte, want []specRecord, data []byte) {
	t.Helper()
	var gotSizes, wantSizes []int
	for _, w := range writes {
		gotSizes = append(gotSizes, len(w))
	}
	for _, r := range want {
		wantSizes = append(wantSizes, r.size)
	}
	if !slices.Equal(gotSizes, wantSizes) {
		t.Fatalf("%s: record sizes %v, want %v", what, gotSizes, wantSizes)
	}
	for i, r := range want {
		w := writes[i]
		if !bytes.Equal(w[:r.data], data[:r.data]) {
			t.Fatalf("%s: record %d does not carry the packet's data in order", what, i)
		}
		data = data[r.data:]
		if pad := w[r.data:]; len(pad) > 0 {
			if len(pad) < HeaderSize {
				t.Fatalf("%s: record %d ends in %d bytes that are no frame", what, i, len(pad))
			}
			h := ParseFrameHeader(pad)
			if h.Cmd != CmdWaste || int(h.Length) != len(pad)-HeaderSize {
				t.Fatalf("%s: record %d padding is %+v, want one cmdWaste frame of %d bytes", what, i, h, len(pad))
			}
			if !bytes.Equal(pad[HeaderSize:], make([]byte, len(pad)-HeaderSize)) {
				t.Fatalf("%s: record %d padding is not zeros", what, i)
			}
		}
	}
	if len(data) != 0 {
		t.Fatalf("%s: %d bytes of data not written", what, len(data))
	}
}

// TestWritePaddedRecords drives the session writer directly with packets of known sizes.
func TestWritePaddedRecords(t *testing.T) {
	scheme, err := ParsePaddingScheme([]byte("stop=9\n" +
		"1=20-20,30-30,c,40-40,3-3\n" +
		"2=10-10,c,50-50\n" +
		"3=5-5,2-2,c\n" +
		"5=c,15-15"))
	if err != nil {
		t.Fatal(err)
	}
	lines := map[int][]int{
		1: {20, 30, CheckMark, 40, 3},
		2: {10, CheckMark, 50},
		3: {5, 2, CheckMark},
		5: {CheckMark, 15},
	}
	for pkt := 1; pkt <= 10; pkt++ {
		for _, n := range []int{1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 19, 20, 21, 43, 44, 45, 49, 50, 51, 60, 83, 89, 90, 93, 100, 1000} {
			t.Run(fmt.Sprintf("pkt%d/n%d", pkt, n), func(t *testing.T) {
				rc := &recConn{Conn: discardConn{}}
				s := newSession(rc, true, &sessionConfig{logger: discardLogger}, scheme, true)
				s.pkt = pkt
				data := make([]byte, n)
				rand.Read(data)
				if err := s.writePacket(data, nil); err != nil {
					t.Fatal(err)
				}
				var want []specRecord
				switch line, ok := lines[pkt]; {
				case pkt >= scheme.Stop():
					want = []specRecord{{n, n}} // at or after stop: as is
				case !ok:
					want = []specRecord{{n, n}} // before stop without a line: as is
				default:
					want = specRecords(line, n)
				}
				checkRecords(t, fmt.Sprintf("packet %d with %d bytes", pkt, n), rc.Writes(), want, data)
				if wantPkt := min(pkt+1, max(pkt, scheme.Stop())); s.pkt != wantPkt {
					t.Fatalf("packet counter = %d after packet %d, want %d", s.pkt, pkt, wantPkt)
				}
			})
		}
	}
	// Hand-checked cases of the rule, so that specRecords itself is pinned down.
	for _, c := range []struct {
		n    int
		want []int
	}{
		{10, []int{20, 30}},            // 10 data + 10 waste; pure padding 30; c stops
		{20, []int{20, 30}},            // exactly one record of data
		{45, []int{20, 25}},            // 5 bytes of room cannot hold a frame header
		{43, []int{20, 30}},            // room for an empty cmdWaste frame
		{60, []int{20, 30, 40, 7}},     // c passes, 10 data + waste, 3-3 becomes 7
		{100, []int{20, 30, 40, 3, 7}}, // data left after the list goes out as is
	} {
		var got []int
		for _, r := range specRecords(lines[1], c.n) {
			got = append(got, r.size)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("spec records for %d bytes = %v, want %v", c.n, got, c.want)
		}
	}
}

// TestClientPaddingOnTheWire records every write a client makes on its connection and checks
// it against the scheme, packet by packet (spec §6, §6.1).
func TestClientPaddingOnTheWire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		scheme, err := ParsePaddingScheme([]byte("stop=6\n" +
			"0=40-40\n" +
			"1=20-20,30-30,c,40-40,100-100\n" +
			"2=10-10,c,50-50\n" +
			"3=100-100,c,9-9\n" +
			"5=8-8,8-8\n" +
			"6=50-50"))
		if err != nil {
			t.Fatal(err)
		}
		p := newMemPair(t, ServerConfig{PaddingScheme: scheme}, ClientConfig{PaddingScheme: scheme})
		st := p.open("example.com:443") // packet 1: settings, SYN, PSH(address)
		synctest.Wait()
		wire := p.conn(0)
		writes := wire.Writes()
		if len(writes) != 5 {
			t.Fatalf("after OpenStream: %d writes %v, want auth + 4 records", len(writes), sizesOf(writes))
		}

		// Packet 0: the authentication request with padding0 from line 0, in one write.
		auth := writes[0]
		if len(auth) != 34+40 {
			t.Fatalf("packet 0 is %d bytes, want 34 + 40", len(auth))
		}
		if h := sha256.Sum256([]byte("pw-alice")); !bytes.Equal(auth[:32], h[:]) {
			t.Fatal("packet 0 does not start with the password hash")
		}
		if n := binary.BigEndian.Uint16(auth[32:34]); n != 40 {
			t.Fatalf("padding0 length = %d, want 40", n)
		}

		// Packet 1: settings + SYN + PSH(address) cut to 20, 30, (c: data left), 40, then the
		// rest of the data and a cmdWaste frame filling the 100-byte record.
		settings := Settings{"v": "2", "client": "", "padding-md5": scheme.MD5(), settingHalfClose: "1"}.Encode()
		pkt1 := AppendFrame(nil, CmdSettings, 0, settings)
		pkt1 = append(pkt1, clientOpen(t, "", 1, "example.com:443")...)
		checkRecords(t, "packet 1", writes[1:5], specRecords([]int{20, 30, CheckMark, 40, 100}, len(pkt1)), pkt1)
		if len(pkt1) <= 90 || len(pkt1) > 90+100-HeaderSize {
			t.Fatalf("packet 1 carries %d bytes: the case no longer ends inside the 100-byte record", len(pkt1))
		}

		// Packet 2: a 3-byte write is a 10-byte PSH frame: exactly the 10-byte record; c stops.
		if _, err := st.Write([]byte("abc")); err != nil {
			t.Fatal(err)
		}
		// Packet 3: a 200-byte write (207-byte frame): 100, c passes, 9, then 98 as is.
		big := make([]byte, 200)
		rand.Read(big)
		if _, err := st.Write(big); err != nil {
			t.Fatal(err)
		}
		// Packet 4: no line before stop: as is.
		if _, err := st.Write([]byte("12345")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 3+200+5)
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		// Packet 5: a control frame counts too: cmdFIN (7 bytes) fills the first 8-byte record
		// but for one byte, too little for a cmdWaste frame; the second is pure padding.
		st.Close()
		synctest.Wait()
		// Packet 6 is at stop: the next stream on the reused session goes out unpadded.
		st2 := p.open("example.org:80")
		echo(t, st2, []byte("hello"))
		st2.Close()
		synctest.Wait()

		writes = wire.Writes()[5:]
		off := 0
		next := func(what string, want []specRecord, data []byte) {
			t.Helper()
			if off+len(want) > len(writes) {
				t.Fatalf("%s: only %d writes left %v, want %d", what, len(writes)-off, sizesOf(writes[off:]), len(want))
			}
			checkRecords(t, what, writes[off:off+len(want)], want, data)
			off += len(want)
		}
		next("packet 2", specRecords([]int{10, CheckMark, 50}, 10), AppendFrame(nil, CmdPSH, 1, []byte("abc")))
		next("packet 3", specRecords([]int{100, CheckMark, 9}, 207), AppendFrame(nil, CmdPSH, 1, big))
		next("packet 4", []specRecord{{12, 12}}, AppendFrame(nil, CmdPSH, 1, []byte("12345")))
		next("packet 5", specRecords([]int{8, 8}, 7), AppendFrame(nil, CmdFIN, 1, nil))
		if got := sizesOf(writes[off-2 : off]); !slices.Equal(got, []int{7, 8}) {
			t.Fatalf("packet 5 records %v, want [7 8]", got)
		}
		// After stop, a packet with stream data goes out as is, in one write. A control-only
		// packet (here the cmdFIN of the second stream) carries one cmdWaste frame of random size
		// in the same write, so that no fixed-size record betrays it (an extension of ours:
		// deployed peers discard cmdWaste).
		rest := writes[off:]
		open2 := clientOpen(t, "", 2, "example.org:80")
		first := AppendFrame(append([]byte(nil), open2...), CmdPSH, 2, []byte("hello"))
		if len(rest) != 2 {
			t.Fatalf("after stop: writes %v, want 2 (data packet, FIN packet)", sizesOf(rest))
		}
		if !bytes.Equal(rest[0], first) {
			t.Fatalf("packet 6 = %d bytes, want SYN + address + data in one unpadded write (%d bytes)", len(rest[0]), len(first))
		}
		fin := parseFrames(t, rest[1])
		if len(fin) != 2 || fin[0].Cmd != CmdFIN || fin[0].StreamID != 2 || fin[1].Cmd != CmdWaste {
			t.Fatalf("control-only packet after stop = %v, want FIN + one cmdWaste", fin)
		}
		// and the whole connection still parses as frames
		clientFrames(t, wire.Bytes())
	})
}

func sizesOf(writes [][]byte) []int {
	var out []int
	for _, w := range writes {
		out = append(out, len(w))
	}
	return out
}

// TestDownstreamPadding: servers do not pad by default; with PadDownstream the server's first
// write follows line 1.
func TestDownstreamPadding(t *testing.T) {
	scheme := MustParsePaddingScheme("stop=3\n0=1-1\n1=50-50\n2=60-60")
	for _, pad := range []bool{false, true} {
		t.Run(fmt.Sprint("pad=", pad), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newMemPair(t, ServerConfig{PaddingScheme: scheme, PadDownstream: pad}, ClientConfig{})
				st := p.open("example.com:80")
				echo(t, st, []byte("ping"))
				st.Close()
				synctest.Wait()
				writes := p.serverConn(0).Writes()
				frames := parseFrames(t, bytes.Join(writes, nil))
				waste := countCmd(frames, CmdWaste)
				if !pad && waste != 0 {
					t.Fatalf("server sent %d cmdWaste frames without PadDownstream", waste)
				}
				if pad {
					if waste == 0 || len(writes[0]) != 50 {
						t.Fatalf("PadDownstream: first server writes %v, waste frames %d; want the first record 50 bytes", sizesOf(writes), waste)
					}
				}
				if countCmd(frames, CmdUpdatePaddingScheme) != 1 {
					t.Fatalf("server did not push its scheme to a client with another: %v", frames)
				}
			})
		})
	}
}
