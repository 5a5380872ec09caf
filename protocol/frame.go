package protocol

import (
	"encoding/binary"
	"strconv"
)

// Command is an AnyTLS frame command.
type Command uint8

// Frame commands (spec §3).
const (
	CmdWaste               Command = 0
	CmdSYN                 Command = 1
	CmdPSH                 Command = 2
	CmdFIN                 Command = 3
	CmdSettings            Command = 4
	CmdAlert               Command = 5
	CmdUpdatePaddingScheme Command = 6
	CmdSYNACK              Command = 7
	CmdHeartRequest        Command = 8
	CmdHeartResponse       Command = 9
	CmdServerSettings      Command = 10
)

// cmdWindowUpdate (this project's extension, sent only where both ends announced settingWindow)
// grants the peer more room on stream streamId: its data is a uint32, big-endian, the number of
// bytes the reader consumed. A value far from the protocol's own commands, so that a future
// version of the protocol cannot collide with it.
const cmdWindowUpdate Command = 0xE0

// HeaderSize is the size of a frame header: command, stream id, data length.
const HeaderSize = 7

// MaxFrameData is the largest data a single frame carries.
const MaxFrameData = 65535

var commandNames = [...]string{
	CmdWaste:               "Waste",
	CmdSYN:                 "SYN",
	CmdPSH:                 "PSH",
	CmdFIN:                 "FIN",
	CmdSettings:            "Settings",
	CmdAlert:               "Alert",
	CmdUpdatePaddingScheme: "UpdatePaddingScheme",
	CmdSYNACK:              "SYNACK",
	CmdHeartRequest:        "HeartRequest",
	CmdHeartResponse:       "HeartResponse",
	CmdServerSettings:      "ServerSettings",
}

func (c Command) String() string {
	if int(c) < len(commandNames) {
		return commandNames[c]
	}
	return "Unknown(" + strconv.Itoa(int(c)) + ")"
}

// Known reports whether c is a command defined by the protocol.
func (c Command) Known() bool { return int(c) < len(commandNames) }

// FrameHeader is a decoded frame header.
type FrameHeader struct {
	Cmd      Command
	StreamID uint32
	Length   uint16
}

// PutFrameHeader encodes a header into b[:HeaderSize].
func PutFrameHeader(b []byte, cmd Command, sid uint32, length int) {
	_ = b[HeaderSize-1]
	b[0] = byte(cmd)
	binary.BigEndian.PutUint32(b[1:5], sid)
	binary.BigEndian.PutUint16(b[5:7], uint16(length))
}

// AppendFrame appends a whole frame (header and data) to b. len(data) must be <= MaxFrameData.
func AppendFrame(b []byte, cmd Command, sid uint32, data []byte) []byte {
	var h [HeaderSize]byte
	PutFrameHeader(h[:], cmd, sid, len(data))
	b = append(b, h[:]...)
	return append(b, data...)
}

// ParseFrameHeader decodes b[:HeaderSize].
func ParseFrameHeader(b []byte) FrameHeader {
	_ = b[HeaderSize-1]
	return FrameHeader{
		Cmd:      Command(b[0]),
		StreamID: binary.BigEndian.Uint32(b[1:5]),
		Length:   binary.BigEndian.Uint16(b[5:7]),
	}
}
