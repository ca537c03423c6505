"""The characters whose presence means Unicode NFKC may change a string.

A string without any of them is NFKC-normalised already, so :mod:`pipeline.dedup` runs Polars'
``str.normalize("NFKC")`` only on strings that contain one (a few percent of real rows instead of
every row with a non-ASCII character). The class holds every code point that (a) NFKC changes on
its own, (b) has a non-zero canonical combining class (reordering, composition), (c) is the second
element of a canonical composition pair (it can fuse with the character before it), (d) is a Hangul
conjoining jamo (algorithmic composition), or (e) was unassigned in the Unicode version it was built
with (so a newer Unicode in Polars cannot add an unseen decomposition). :func:`build` regenerates it;
``tests/test_dedup_text.py`` checks that the stored class covers what this Python's ``unicodedata``
says and that skipping strings outside it changes nothing on real data.
"""

from __future__ import annotations

#: Built with Python 3.11's unicodedata (Unicode 14.0.0) by :func:`build`.
NFKC_MAY_CHANGE = (
    r"[\x{A0}\x{A8}\x{AA}\x{AF}\x{B2}-\x{B5}\x{B8}-\x{BA}\x{BC}-\x{BE}\x{132}-\x{133}\x{13F}-\x{140}"
    r"\x{149}\x{17F}\x{1C4}-\x{1CC}\x{1F1}-\x{1F3}\x{2B0}-\x{2B8}\x{2D8}-\x{2DD}\x{2E0}-\x{2E4}"
    r"\x{300}-\x{34E}\x{350}-\x{36F}\x{374}\x{378}-\x{37A}\x{37E}\x{380}-\x{385}\x{387}\x{38B}\x{38D}"
    r"\x{3A2}\x{3D0}-\x{3D6}\x{3F0}-\x{3F2}\x{3F4}-\x{3F5}\x{3F9}\x{483}-\x{487}\x{530}\x{557}-\x{558}"
    r"\x{587}\x{58B}-\x{58C}\x{590}-\x{5BD}\x{5BF}\x{5C1}-\x{5C2}\x{5C4}-\x{5C5}\x{5C7}-\x{5CF}"
    r"\x{5EB}-\x{5EE}\x{5F5}-\x{5FF}\x{610}-\x{61A}\x{64B}-\x{65F}\x{670}\x{675}-\x{678}\x{6D6}-"
    r"\x{6DC}\x{6DF}-\x{6E4}\x{6E7}-\x{6E8}\x{6EA}-\x{6ED}\x{70E}\x{711}\x{730}-\x{74C}\x{7B2}-\x{7BF}"
    r"\x{7EB}-\x{7F3}\x{7FB}-\x{7FD}\x{816}-\x{819}\x{81B}-\x{823}\x{825}-\x{827}\x{829}-\x{82F}"
    r"\x{83F}\x{859}-\x{85D}\x{85F}\x{86B}-\x{86F}\x{88F}\x{892}-\x{89F}\x{8CA}-\x{8E1}\x{8E3}-\x{8FF}"
    r"\x{93C}\x{94D}\x{951}-\x{954}\x{958}-\x{95F}\x{984}\x{98D}-\x{98E}\x{991}-\x{992}\x{9A9}\x{9B1}"
    r"\x{9B3}-\x{9B5}\x{9BA}-\x{9BC}\x{9BE}\x{9C5}-\x{9C6}\x{9C9}-\x{9CA}\x{9CD}\x{9CF}-\x{9DF}"
    r"\x{9E4}-\x{9E5}\x{9FE}-\x{A00}\x{A04}\x{A0B}-\x{A0E}\x{A11}-\x{A12}\x{A29}\x{A31}\x{A33}-\x{A34}"
    r"\x{A36}-\x{A37}\x{A3A}-\x{A3D}\x{A43}-\x{A46}\x{A49}-\x{A4A}\x{A4D}-\x{A50}\x{A52}-\x{A5B}"
    r"\x{A5D}-\x{A65}\x{A77}-\x{A80}\x{A84}\x{A8E}\x{A92}\x{AA9}\x{AB1}\x{AB4}\x{ABA}-\x{ABC}\x{AC6}"
    r"\x{ACA}\x{ACD}-\x{ACF}\x{AD1}-\x{ADF}\x{AE4}-\x{AE5}\x{AF2}-\x{AF8}\x{B00}\x{B04}\x{B0D}-\x{B0E}"
    r"\x{B11}-\x{B12}\x{B29}\x{B31}\x{B34}\x{B3A}-\x{B3C}\x{B3E}\x{B45}-\x{B46}\x{B49}-\x{B4A}\x{B4D}-"
    r"\x{B54}\x{B56}-\x{B5E}\x{B64}-\x{B65}\x{B78}-\x{B81}\x{B84}\x{B8B}-\x{B8D}\x{B91}\x{B96}-\x{B98}"
    r"\x{B9B}\x{B9D}\x{BA0}-\x{BA2}\x{BA5}-\x{BA7}\x{BAB}-\x{BAD}\x{BBA}-\x{BBE}\x{BC3}-\x{BC5}\x{BC9}"
    r"\x{BCD}-\x{BCF}\x{BD1}-\x{BE5}\x{BFB}-\x{BFF}\x{C0D}\x{C11}\x{C29}\x{C3A}-\x{C3C}\x{C45}\x{C49}"
    r"\x{C4D}-\x{C57}\x{C5B}-\x{C5C}\x{C5E}-\x{C5F}\x{C64}-\x{C65}\x{C70}-\x{C76}\x{C8D}\x{C91}\x{CA9}"
    r"\x{CB4}\x{CBA}-\x{CBC}\x{CC2}\x{CC5}\x{CC9}\x{CCD}-\x{CDC}\x{CDF}\x{CE4}-\x{CE5}\x{CF0}\x{CF3}-"
    r"\x{CFF}\x{D0D}\x{D11}\x{D3B}-\x{D3C}\x{D3E}\x{D45}\x{D49}\x{D4D}\x{D50}-\x{D53}\x{D57}\x{D64}-"
    r"\x{D65}\x{D80}\x{D84}\x{D97}-\x{D99}\x{DB2}\x{DBC}\x{DBE}-\x{DBF}\x{DC7}-\x{DCF}\x{DD5}\x{DD7}"
    r"\x{DDF}-\x{DE5}\x{DF0}-\x{DF1}\x{DF5}-\x{E00}\x{E33}\x{E38}-\x{E3E}\x{E48}-\x{E4B}\x{E5C}-"
    r"\x{E80}\x{E83}\x{E85}\x{E8B}\x{EA4}\x{EA6}\x{EB3}\x{EB8}-\x{EBA}\x{EBE}-\x{EBF}\x{EC5}\x{EC7}-"
    r"\x{ECB}\x{ECE}-\x{ECF}\x{EDA}-\x{EDD}\x{EE0}-\x{EFF}\x{F0C}\x{F18}-\x{F19}\x{F35}\x{F37}\x{F39}"
    r"\x{F43}\x{F48}\x{F4D}\x{F52}\x{F57}\x{F5C}\x{F69}\x{F6D}-\x{F7D}\x{F80}-\x{F84}\x{F86}-\x{F87}"
    r"\x{F93}\x{F98}\x{F9D}\x{FA2}\x{FA7}\x{FAC}\x{FB5}\x{FB7}\x{FB9}\x{FBD}\x{FC6}\x{FCD}\x{FDB}-"
    r"\x{FFF}\x{102E}\x{1037}\x{1039}-\x{103A}\x{108D}\x{10C6}\x{10C8}-\x{10CC}\x{10CE}-\x{10CF}"
    r"\x{10FC}\x{1100}-\x{11FF}\x{1249}\x{124E}-\x{124F}\x{1257}\x{1259}\x{125E}-\x{125F}\x{1289}"
    r"\x{128E}-\x{128F}\x{12B1}\x{12B6}-\x{12B7}\x{12BF}\x{12C1}\x{12C6}-\x{12C7}\x{12D7}\x{1311}"
    r"\x{1316}-\x{1317}\x{135B}-\x{135F}\x{137D}-\x{137F}\x{139A}-\x{139F}\x{13F6}-\x{13F7}\x{13FE}-"
    r"\x{13FF}\x{169D}-\x{169F}\x{16F9}-\x{16FF}\x{1714}-\x{171E}\x{1734}\x{1737}-\x{173F}\x{1754}-"
    r"\x{175F}\x{176D}\x{1771}\x{1774}-\x{177F}\x{17D2}\x{17DD}-\x{17DF}\x{17EA}-\x{17EF}\x{17FA}-"
    r"\x{17FF}\x{181A}-\x{181F}\x{1879}-\x{187F}\x{18A9}\x{18AB}-\x{18AF}\x{18F6}-\x{18FF}\x{191F}"
    r"\x{192C}-\x{192F}\x{1939}-\x{193F}\x{1941}-\x{1943}\x{196E}-\x{196F}\x{1975}-\x{197F}\x{19AC}-"
    r"\x{19AF}\x{19CA}-\x{19CF}\x{19DB}-\x{19DD}\x{1A17}-\x{1A18}\x{1A1C}-\x{1A1D}\x{1A5F}-\x{1A60}"
    r"\x{1A75}-\x{1A7F}\x{1A8A}-\x{1A8F}\x{1A9A}-\x{1A9F}\x{1AAE}-\x{1ABD}\x{1ABF}-\x{1AFF}\x{1B34}-"
    r"\x{1B35}\x{1B44}\x{1B4D}-\x{1B4F}\x{1B6B}-\x{1B73}\x{1B7F}\x{1BAA}-\x{1BAB}\x{1BE6}\x{1BF2}-"
    r"\x{1BFB}\x{1C37}-\x{1C3A}\x{1C4A}-\x{1C4C}\x{1C89}-\x{1C8F}\x{1CBB}-\x{1CBC}\x{1CC8}-\x{1CD2}"
    r"\x{1CD4}-\x{1CE0}\x{1CE2}-\x{1CE8}\x{1CED}\x{1CF4}\x{1CF8}-\x{1CF9}\x{1CFB}-\x{1CFF}\x{1D2C}-"
    r"\x{1D2E}\x{1D30}-\x{1D3A}\x{1D3C}-\x{1D4D}\x{1D4F}-\x{1D6A}\x{1D78}\x{1D9B}-\x{1DFF}\x{1E9A}-"
    r"\x{1E9B}\x{1F16}-\x{1F17}\x{1F1E}-\x{1F1F}\x{1F46}-\x{1F47}\x{1F4E}-\x{1F4F}\x{1F58}\x{1F5A}"
    r"\x{1F5C}\x{1F5E}\x{1F71}\x{1F73}\x{1F75}\x{1F77}\x{1F79}\x{1F7B}\x{1F7D}-\x{1F7F}\x{1FB5}"
    r"\x{1FBB}\x{1FBD}-\x{1FC1}\x{1FC5}\x{1FC9}\x{1FCB}\x{1FCD}-\x{1FCF}\x{1FD3}-\x{1FD5}\x{1FDB}-"
    r"\x{1FDF}\x{1FE3}\x{1FEB}\x{1FED}-\x{1FF1}\x{1FF5}\x{1FF9}\x{1FFB}\x{1FFD}-\x{200A}\x{2011}"
    r"\x{2017}\x{2024}-\x{2026}\x{202F}\x{2033}-\x{2034}\x{2036}-\x{2037}\x{203C}\x{203E}\x{2047}-"
    r"\x{2049}\x{2057}\x{205F}\x{2065}\x{2070}-\x{209F}\x{20A8}\x{20C1}-\x{20DC}\x{20E1}\x{20E5}-"
    r"\x{2103}\x{2105}-\x{2107}\x{2109}-\x{2113}\x{2115}-\x{2116}\x{2119}-\x{211D}\x{2120}-\x{2122}"
    r"\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2131}\x{2133}-\x{2139}\x{213B}-\x{2140}"
    r"\x{2145}-\x{2149}\x{2150}-\x{217F}\x{2189}\x{218C}-\x{218F}\x{222C}-\x{222D}\x{222F}-\x{2230}"
    r"\x{2329}-\x{232A}\x{2427}-\x{243F}\x{244B}-\x{24EA}\x{2A0C}\x{2A74}-\x{2A76}\x{2ADC}\x{2B74}-"
    r"\x{2B75}\x{2B96}\x{2C7C}-\x{2C7D}\x{2CEF}-\x{2CF1}\x{2CF4}-\x{2CF8}\x{2D26}\x{2D28}-\x{2D2C}"
    r"\x{2D2E}-\x{2D2F}\x{2D68}-\x{2D6F}\x{2D71}-\x{2D7F}\x{2D97}-\x{2D9F}\x{2DA7}\x{2DAF}\x{2DB7}"
    r"\x{2DBF}\x{2DC7}\x{2DCF}\x{2DD7}\x{2DDF}-\x{2DFF}\x{2E5E}-\x{2E7F}\x{2E9A}\x{2E9F}\x{2EF3}-"
    r"\x{2FEF}\x{2FFC}-\x{3000}\x{302A}-\x{302F}\x{3036}\x{3038}-\x{303A}\x{3040}\x{3097}-\x{309C}"
    r"\x{309F}\x{30FF}-\x{3104}\x{3130}-\x{318F}\x{3192}-\x{319F}\x{31E4}-\x{31EF}\x{3200}-\x{3247}"
    r"\x{3250}-\x{327E}\x{3280}-\x{33FF}\x{A48D}-\x{A48F}\x{A4C7}-\x{A4CF}\x{A62C}-\x{A63F}\x{A66F}"
    r"\x{A674}-\x{A67D}\x{A69C}-\x{A69F}\x{A6F0}-\x{A6F1}\x{A6F8}-\x{A6FF}\x{A770}\x{A7CB}-\x{A7CF}"
    r"\x{A7D2}\x{A7D4}\x{A7DA}-\x{A7F4}\x{A7F8}-\x{A7F9}\x{A806}\x{A82C}-\x{A82F}\x{A83A}-\x{A83F}"
    r"\x{A878}-\x{A87F}\x{A8C4}\x{A8C6}-\x{A8CD}\x{A8DA}-\x{A8F1}\x{A92B}-\x{A92D}\x{A953}-\x{A95E}"
    r"\x{A97D}-\x{A97F}\x{A9B3}\x{A9C0}\x{A9CE}\x{A9DA}-\x{A9DD}\x{A9FF}\x{AA37}-\x{AA3F}\x{AA4E}-"
    r"\x{AA4F}\x{AA5A}-\x{AA5B}\x{AAB0}\x{AAB2}-\x{AAB4}\x{AAB7}-\x{AAB8}\x{AABE}-\x{AABF}\x{AAC1}"
    r"\x{AAC3}-\x{AADA}\x{AAF6}-\x{AB00}\x{AB07}-\x{AB08}\x{AB0F}-\x{AB10}\x{AB17}-\x{AB1F}\x{AB27}"
    r"\x{AB2F}\x{AB5C}-\x{AB5F}\x{AB69}\x{AB6C}-\x{AB6F}\x{ABED}-\x{ABEF}\x{ABFA}-\x{ABFF}\x{D7A4}-"
    r"\x{D7AF}\x{D7C7}-\x{D7CA}\x{D7FC}-\x{D7FF}\x{F900}-\x{FA0D}\x{FA10}\x{FA12}\x{FA15}-\x{FA1E}"
    r"\x{FA20}\x{FA22}\x{FA25}-\x{FA26}\x{FA2A}-\x{FBB1}\x{FBC3}-\x{FD3D}\x{FD50}-\x{FDCE}\x{FDD0}-"
    r"\x{FDFC}\x{FE10}-\x{FE44}\x{FE47}-\x{FE72}\x{FE74}-\x{FEFE}\x{FF00}-\x{FFF8}\x{FFFE}-\x{FFFF}"
    r"\x{1000C}\x{10027}\x{1003B}\x{1003E}\x{1004E}-\x{1004F}\x{1005E}-\x{1007F}\x{100FB}-\x{100FF}"
    r"\x{10103}-\x{10106}\x{10134}-\x{10136}\x{1018F}\x{1019D}-\x{1019F}\x{101A1}-\x{101CF}\x{101FD}-"
    r"\x{1027F}\x{1029D}-\x{1029F}\x{102D1}-\x{102E0}\x{102FC}-\x{102FF}\x{10324}-\x{1032C}\x{1034B}-"
    r"\x{1034F}\x{10376}-\x{1037F}\x{1039E}\x{103C4}-\x{103C7}\x{103D6}-\x{103FF}\x{1049E}-\x{1049F}"
    r"\x{104AA}-\x{104AF}\x{104D4}-\x{104D7}\x{104FC}-\x{104FF}\x{10528}-\x{1052F}\x{10564}-\x{1056E}"
    r"\x{1057B}\x{1058B}\x{10593}\x{10596}\x{105A2}\x{105B2}\x{105BA}\x{105BD}-\x{105FF}\x{10737}-"
    r"\x{1073F}\x{10756}-\x{1075F}\x{10768}-\x{1077F}\x{10781}-\x{107FF}\x{10806}-\x{10807}\x{10809}"
    r"\x{10836}\x{10839}-\x{1083B}\x{1083D}-\x{1083E}\x{10856}\x{1089F}-\x{108A6}\x{108B0}-\x{108DF}"
    r"\x{108F3}\x{108F6}-\x{108FA}\x{1091C}-\x{1091E}\x{1093A}-\x{1093E}\x{10940}-\x{1097F}\x{109B8}-"
    r"\x{109BB}\x{109D0}-\x{109D1}\x{10A04}\x{10A07}-\x{10A0B}\x{10A0D}\x{10A0F}\x{10A14}\x{10A18}"
    r"\x{10A36}-\x{10A3F}\x{10A49}-\x{10A4F}\x{10A59}-\x{10A5F}\x{10AA0}-\x{10ABF}\x{10AE5}-\x{10AEA}"
    r"\x{10AF7}-\x{10AFF}\x{10B36}-\x{10B38}\x{10B56}-\x{10B57}\x{10B73}-\x{10B77}\x{10B92}-\x{10B98}"
    r"\x{10B9D}-\x{10BA8}\x{10BB0}-\x{10BFF}\x{10C49}-\x{10C7F}\x{10CB3}-\x{10CBF}\x{10CF3}-\x{10CF9}"
    r"\x{10D24}-\x{10D2F}\x{10D3A}-\x{10E5F}\x{10E7F}\x{10EAA}-\x{10EAC}\x{10EAE}-\x{10EAF}\x{10EB2}-"
    r"\x{10EFF}\x{10F28}-\x{10F2F}\x{10F46}-\x{10F50}\x{10F5A}-\x{10F6F}\x{10F82}-\x{10F85}\x{10F8A}-"
    r"\x{10FAF}\x{10FCC}-\x{10FDF}\x{10FF7}-\x{10FFF}\x{11046}\x{1104E}-\x{11051}\x{11070}\x{11076}-"
    r"\x{1107F}\x{110B9}-\x{110BA}\x{110C3}-\x{110CC}\x{110CE}-\x{110CF}\x{110E9}-\x{110EF}\x{110FA}-"
    r"\x{11102}\x{11127}\x{11133}-\x{11135}\x{11148}-\x{1114F}\x{11173}\x{11177}-\x{1117F}\x{111C0}"
    r"\x{111CA}\x{111E0}\x{111F5}-\x{111FF}\x{11212}\x{11235}-\x{11236}\x{1123F}-\x{1127F}\x{11287}"
    r"\x{11289}\x{1128E}\x{1129E}\x{112AA}-\x{112AF}\x{112E9}-\x{112EF}\x{112FA}-\x{112FF}\x{11304}"
    r"\x{1130D}-\x{1130E}\x{11311}-\x{11312}\x{11329}\x{11331}\x{11334}\x{1133A}-\x{1133C}\x{1133E}"
    r"\x{11345}-\x{11346}\x{11349}-\x{1134A}\x{1134D}-\x{1134F}\x{11351}-\x{1135C}\x{11364}-\x{113FF}"
    r"\x{11442}\x{11446}\x{1145C}\x{1145E}\x{11462}-\x{1147F}\x{114B0}\x{114BA}\x{114BD}\x{114C2}-"
    r"\x{114C3}\x{114C8}-\x{114CF}\x{114DA}-\x{1157F}\x{115AF}\x{115B6}-\x{115B7}\x{115BF}-\x{115C0}"
    r"\x{115DE}-\x{115FF}\x{1163F}\x{11645}-\x{1164F}\x{1165A}-\x{1165F}\x{1166D}-\x{1167F}\x{116B6}-"
    r"\x{116B7}\x{116BA}-\x{116BF}\x{116CA}-\x{116FF}\x{1171B}-\x{1171C}\x{1172B}-\x{1172F}\x{11747}-"
    r"\x{117FF}\x{11839}-\x{1183A}\x{1183C}-\x{1189F}\x{118F3}-\x{118FE}\x{11907}-\x{11908}\x{1190A}-"
    r"\x{1190B}\x{11914}\x{11917}\x{11930}\x{11936}\x{11939}-\x{1193A}\x{1193D}-\x{1193E}\x{11943}"
    r"\x{11947}-\x{1194F}\x{1195A}-\x{1199F}\x{119A8}-\x{119A9}\x{119D8}-\x{119D9}\x{119E0}\x{119E5}-"
    r"\x{119FF}\x{11A34}\x{11A47}-\x{11A4F}\x{11A99}\x{11AA3}-\x{11AAF}\x{11AF9}-\x{11BFF}\x{11C09}"
    r"\x{11C37}\x{11C3F}\x{11C46}-\x{11C4F}\x{11C6D}-\x{11C6F}\x{11C90}-\x{11C91}\x{11CA8}\x{11CB7}-"
    r"\x{11CFF}\x{11D07}\x{11D0A}\x{11D37}-\x{11D39}\x{11D3B}\x{11D3E}\x{11D42}\x{11D44}-\x{11D45}"
    r"\x{11D48}-\x{11D4F}\x{11D5A}-\x{11D5F}\x{11D66}\x{11D69}\x{11D8F}\x{11D92}\x{11D97}\x{11D99}-"
    r"\x{11D9F}\x{11DAA}-\x{11EDF}\x{11EF9}-\x{11FAF}\x{11FB1}-\x{11FBF}\x{11FF2}-\x{11FFE}\x{1239A}-"
    r"\x{123FF}\x{1246F}\x{12475}-\x{1247F}\x{12544}-\x{12F8F}\x{12FF3}-\x{12FFF}\x{1342F}\x{13439}-"
    r"\x{143FF}\x{14647}-\x{167FF}\x{16A39}-\x{16A3F}\x{16A5F}\x{16A6A}-\x{16A6D}\x{16ABF}\x{16ACA}-"
    r"\x{16ACF}\x{16AEE}-\x{16AF4}\x{16AF6}-\x{16AFF}\x{16B30}-\x{16B36}\x{16B46}-\x{16B4F}\x{16B5A}"
    r"\x{16B62}\x{16B78}-\x{16B7C}\x{16B90}-\x{16E3F}\x{16E9B}-\x{16EFF}\x{16F4B}-\x{16F4E}\x{16F88}-"
    r"\x{16F8E}\x{16FA0}-\x{16FDF}\x{16FE5}-\x{16FFF}\x{187F8}-\x{187FF}\x{18CD6}-\x{18CFF}\x{18D09}-"
    r"\x{1AFEF}\x{1AFF4}\x{1AFFC}\x{1AFFF}\x{1B123}-\x{1B14F}\x{1B153}-\x{1B163}\x{1B168}-\x{1B16F}"
    r"\x{1B2FC}-\x{1BBFF}\x{1BC6B}-\x{1BC6F}\x{1BC7D}-\x{1BC7F}\x{1BC89}-\x{1BC8F}\x{1BC9A}-\x{1BC9B}"
    r"\x{1BC9E}\x{1BCA4}-\x{1CEFF}\x{1CF2E}-\x{1CF2F}\x{1CF47}-\x{1CF4F}\x{1CFC4}-\x{1CFFF}\x{1D0F6}-"
    r"\x{1D0FF}\x{1D127}-\x{1D128}\x{1D15E}-\x{1D169}\x{1D16D}-\x{1D172}\x{1D17B}-\x{1D182}\x{1D185}-"
    r"\x{1D18B}\x{1D1AA}-\x{1D1AD}\x{1D1BB}-\x{1D1C0}\x{1D1EB}-\x{1D1FF}\x{1D242}-\x{1D244}\x{1D246}-"
    r"\x{1D2DF}\x{1D2F4}-\x{1D2FF}\x{1D357}-\x{1D35F}\x{1D379}-\x{1D7FF}\x{1DA8C}-\x{1DA9A}\x{1DAA0}"
    r"\x{1DAB0}-\x{1DEFF}\x{1DF1F}-\x{1E0FF}\x{1E12D}-\x{1E136}\x{1E13E}-\x{1E13F}\x{1E14A}-\x{1E14D}"
    r"\x{1E150}-\x{1E28F}\x{1E2AE}-\x{1E2BF}\x{1E2EC}-\x{1E2EF}\x{1E2FA}-\x{1E2FE}\x{1E300}-\x{1E7DF}"
    r"\x{1E7E7}\x{1E7EC}\x{1E7EF}\x{1E7FF}\x{1E8C5}-\x{1E8C6}\x{1E8D0}-\x{1E8FF}\x{1E944}-\x{1E94A}"
    r"\x{1E94C}-\x{1E94F}\x{1E95A}-\x{1E95D}\x{1E960}-\x{1EC70}\x{1ECB5}-\x{1ED00}\x{1ED3E}-\x{1EEEF}"
    r"\x{1EEF2}-\x{1EFFF}\x{1F02C}-\x{1F02F}\x{1F094}-\x{1F09F}\x{1F0AF}-\x{1F0B0}\x{1F0C0}\x{1F0D0}"
    r"\x{1F0F6}-\x{1F10A}\x{1F110}-\x{1F12E}\x{1F130}-\x{1F14F}\x{1F16A}-\x{1F16C}\x{1F190}\x{1F1AE}-"
    r"\x{1F1E5}\x{1F200}-\x{1F25F}\x{1F266}-\x{1F2FF}\x{1F6D8}-\x{1F6DC}\x{1F6ED}-\x{1F6EF}\x{1F6FD}-"
    r"\x{1F6FF}\x{1F774}-\x{1F77F}\x{1F7D9}-\x{1F7DF}\x{1F7EC}-\x{1F7EF}\x{1F7F1}-\x{1F7FF}\x{1F80C}-"
    r"\x{1F80F}\x{1F848}-\x{1F84F}\x{1F85A}-\x{1F85F}\x{1F888}-\x{1F88F}\x{1F8AE}-\x{1F8AF}\x{1F8B2}-"
    r"\x{1F8FF}\x{1FA54}-\x{1FA5F}\x{1FA6E}-\x{1FA6F}\x{1FA75}-\x{1FA77}\x{1FA7D}-\x{1FA7F}\x{1FA87}-"
    r"\x{1FA8F}\x{1FAAD}-\x{1FAAF}\x{1FABB}-\x{1FABF}\x{1FAC6}-\x{1FACF}\x{1FADA}-\x{1FADF}\x{1FAE8}-"
    r"\x{1FAEF}\x{1FAF7}-\x{1FAFF}\x{1FB93}\x{1FBCB}-\x{1FFFF}\x{2A6E0}-\x{2A6FF}\x{2B739}-\x{2B73F}"
    r"\x{2B81E}-\x{2B81F}\x{2CEA2}-\x{2CEAF}\x{2EBE1}-\x{2FFFF}\x{3134B}-\x{E0000}\x{E0002}-\x{E001F}"
    r"\x{E0080}-\x{E00FF}\x{E01F0}-\x{EFFFF}\x{FFFFE}-\x{FFFFF}\x{10FFFE}-\x{10FFFF}]"
)


def code_points() -> set[int]:
    """The code points of (a)-(e) above, from this Python's ``unicodedata``."""
    import unicodedata

    need: set[int] = set(range(0x1100, 0x1200))  # Hangul jamo (conjoining): composed algorithmically
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if (unicodedata.category(ch) == "Cn" or unicodedata.combining(ch)
                or unicodedata.normalize("NFKC", ch) != ch):
            need.add(cp)
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<") and len(d.split()) == 2:
            need.add(int(d.split()[1], 16))
    return need


def build() -> str:
    """The regex class (``[\\x{..}-\\x{..}...]``) of :func:`code_points`."""
    ranges: list[list[int]] = []
    for c in sorted(code_points()):
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "[" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"
