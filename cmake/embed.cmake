# Turns the file IN into a C source OUT defining `const char nnc_prelude[]` and its length.
file(READ ${IN} HEX HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," BYTES "${HEX}")
file(WRITE ${OUT} "/* generated from std.nn by cmake/embed.cmake */\n#include <stddef.h>\n"
  "const char nnc_prelude[] = {${BYTES} 0};\nconst size_t nnc_prelude_size = sizeof nnc_prelude - 1;\n")
