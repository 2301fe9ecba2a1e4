"""The device frame path: capture, tracking, confirmation, the frame loop and its runner."""
