#!/usr/bin/env python3
"""Writes the seed inputs in this folder (run: python3 fuzz/seeds/make_seeds.py)."""
import os, struct
def vbi(n):
    out=b''
    while True:
        b=n%128; n//=128
        if n: b|=0x80
        out+=bytes([b])
        if not n: return out
def s(x): 
    x=x.encode() if isinstance(x,str) else x
    return struct.pack('>H',len(x))+x
def pkt(h, body): return bytes([h])+vbi(len(body))+body
def props(p): return vbi(len(p))+p

connect_v31  = pkt(0x10, s('MQIsdp')+b'\x03\x02'+b'\x00\x3c'+s('seed31'))
connect_v311 = pkt(0x10, s('MQTT')+b'\x04'+bytes([0x02|0x04|0x08|0x20|0x80|0x40])+b'\x00\x3c'+s('seed311')+s('will/t')+s('bye')+s('user')+s('pass'))
# v5: clean start, will flag qos1, session expiry 60, receive max 10, topic alias max 5, will delay 1
cprops = props(b'\x11'+struct.pack('>I',60)+b'\x21'+struct.pack('>H',10)+b'\x22'+struct.pack('>H',5))
wprops = props(b'\x18'+struct.pack('>I',1)+b'\x01\x01')
connect_v5 = pkt(0x10, s('MQTT')+b'\x05'+bytes([0x02|0x04|0x08])+b'\x00\x3c'+cprops+s('seed5')+wprops+s('will/t')+s('bye'))
pub0_v4 = pkt(0x30, s('a/b')+b'hello')
pub1_v4 = pkt(0x32|0x01, s('a/b')+b'\x00\x01'+b'retained')
pub2_v4 = pkt(0x34, s('a/c')+b'\x00\x02'+b'q2')
pubrel_v4 = pkt(0x62, b'\x00\x02')
pub0_v5 = pkt(0x30, s('a/b')+props(b'')+b'hello')
# v5 publish qos1 with properties: payload format 1, message expiry 30, topic alias 1, user property, content type
pp = b'\x01\x01'+b'\x02'+struct.pack('>I',30)+b'\x23\x00\x01'+b'\x26'+s('k')+s('v')+b'\x03'+s('text/plain')
pub1_v5 = pkt(0x32, s('a/b')+b'\x00\x03'+props(pp)+b'payload')
pub1_alias_v5 = pkt(0x32, s('')+b'\x00\x04'+props(b'\x23\x00\x01')+b'via-alias')
pub2_v5 = pkt(0x35, s('a/d')+b'\x00\x05'+props(b'\x08'+s('resp/t')+b'\x09'+s('corr'))+b'q2')
pubrel_v5 = pkt(0x62, b'\x00\x05')
puback_v5 = pkt(0x40, b'\x00\x01')
# subscribe: v4 two filters
sub_v4 = pkt(0x82, b'\x00\x0a'+s('a/#')+b'\x01'+s('+/b')+b'\x02')
# v5 subscribe with sub id 7, options: qos2, no-local, retain-as-published, retain handling 1; shared sub
sub_v5 = pkt(0x82, b'\x00\x0b'+props(b'\x0b\x07')+s('a/#')+bytes([0x02|0x04|0x08|0x10])+s('$share/g/a/+')+b'\x01')
unsub_v4 = pkt(0xa2, b'\x00\x0c'+s('a/#'))
unsub_v5 = pkt(0xa2, b'\x00\x0d'+props(b'')+s('a/#'))
ping = b'\xc0\x00'
disc_v4 = b'\xe0\x00'
disc_v5_will = pkt(0xe0, b'\x04'+props(b'\x11'+struct.pack('>I',0)))

HERE = os.path.dirname(os.path.abspath(__file__))

def w(d, name, data):
    d = os.path.join(HERE, d)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d,name),'wb').write(data)

D='decode'
w(D,'connect-v31', connect_v31+sub_v4+pub0_v4)
w(D,'connect-v311-will-auth', connect_v311+pub1_v4+pub2_v4+pubrel_v4+ping+disc_v4)
w(D,'connect-v5-will-props', connect_v5+pub0_v5+pub1_v5+disc_v5_will)
w(D,'publish-v5-qos1-props', pub1_v5+pub1_alias_v5)
w(D,'publish-v5-qos2', pub2_v5+pubrel_v5+puback_v5)
w(D,'publish-v4-qos0-1-2', pub0_v4+pub1_v4+pub2_v4+pubrel_v4)
w(D,'subscribe-v5-options', sub_v5+unsub_v5)
w(D,'subscribe-v4', sub_v4+unsub_v4+ping)
w(D,'disconnect-v5-0x04', disc_v5_will)

C='connection'
# mode byte: 0 = v5 prefix, 1 = 3.1.1 prefix, 3 = 3.1 prefix, 7 = raw; | 0x80 = takeover (two halves)
w(C,'v5-sub-pub-qos2', b'\x00'+sub_v5+pub0_v5+pub1_v5+pub1_alias_v5+pub2_v5+pubrel_v5+unsub_v5+ping+disc_v5_will)
w(C,'v311-sub-pub', b'\x01'+sub_v4+pub0_v4+pub1_v4+pub2_v4+pubrel_v4+unsub_v4+ping+disc_v4)
w(C,'v31-sub-pub', b'\x03'+sub_v4+pub1_v4+disc_v4)
w(C,'raw-connect-v5-will', b'\x07'+connect_v5+sub_v5+pub1_v5+disc_v5_will)
w(C,'raw-connect-v311-will', b'\x07'+connect_v311+sub_v4+pub2_v4)
w(C,'raw-connect-v31', b'\x07'+connect_v31+pub0_v4)
half = sub_v5+pub1_v5
w(C,'takeover-v5', b'\x80'+half+half)
w(C,'v5-publish-retained-then-sub', b'\x00'+pkt(0x33, s('r/x')+b'\x00\x09'+props(b'')+b'keep')+sub_v5+disc_v5_will)
w(C,'v5-protocol-error-second-connect', b'\x00'+connect_v5)
