// sdtune built without libcurl (SDTUNE_HTTP=OFF, e.g. the GPU benchmark build): requests are
// errors.
#include "sdtune/error.h"
#include "sdtune/io/http_client.h"

namespace sdtune::io {

HttpResponse http_post(const std::string& url, const std::string&, const std::vector<std::string>&,
                       double) {
  throw Error("this sdtune was built without HTTP (SDTUNE_HTTP=OFF)", url);
}

}  // namespace sdtune::io
